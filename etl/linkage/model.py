"""The trained model: per task lambda, and m/u per level per comparison.

Serialised as model.json (readable, reusable on a later delivery). Holds
parameters and counts only, never record values.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from etl.errors import ConfigError
from etl.linkage.spec import LinkSpec

FORMAT = "medlink-linkage-model/1"


@dataclass
class TaskModel:
    lam: float
    m: list[np.ndarray]
    u: list[np.ndarray]
    lam_method: str = ""
    expected_matches: float | None = None

    def weight_tables(self) -> list[np.ndarray]:
        out = []
        for m, u in zip(self.m, self.u):
            w = np.zeros(len(m))
            w[1:] = np.log2(np.maximum(m[1:], 1e-12) / np.maximum(u[1:], 1e-12))
            out.append(w)
        return out

    @property
    def prior_weight(self) -> float:
        return math.log2(self.lam / (1 - self.lam))


@dataclass
class Model:
    tasks: dict[str, TaskModel]
    comparison_names: list[str]
    level_labels: list[list[str]]
    signature: str
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self, spec: LinkSpec) -> dict:
        tasks = {}
        for key, tm in self.tasks.items():
            comps = {}
            for j, name in enumerate(self.comparison_names):
                levels = []
                for k, lab in enumerate(self.level_labels[j]):
                    if k == 0:
                        continue
                    m, u = float(tm.m[j][k]), float(tm.u[j][k])
                    levels.append({"level": lab, "m": m, "u": u,
                                   "match_weight": math.log2(max(m, 1e-12) / max(u, 1e-12))})
                comps[name] = levels
            tasks[key] = {"lambda": tm.lam, "prior_match_weight": tm.prior_weight,
                          "lambda_method": tm.lam_method, "expected_matches": tm.expected_matches,
                          "comparisons": comps}
        return {"format": FORMAT, "model_name": spec.name, "signature": self.signature,
                "tasks": tasks, "spec": _jsonable(spec.raw_model), **self.info}


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def signature(spec: LinkSpec) -> str:
    """Hash of the comparisons (kinds, fields, levels): a reused model must match it."""
    comps = [{"name": c.name, "kind": c.kind, "fields": c.fields,
              "levels": [[lv.label, lv.test, lv.params, lv.tf] for lv in c.levels]} for c in spec.comparisons]
    return hashlib.sha256(json.dumps(comps, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_model(path: Path, spec: LinkSpec) -> Model:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError("cannot read the linkage model to reuse (not JSON)", file=str(path),
                          key="linkage.reuse_model")
    if data.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} file", file=str(path), key="linkage.reuse_model")
    sig = signature(spec)
    if data.get("signature") != sig:
        raise ConfigError("the reused model was trained with different comparisons than the model file "
                          "declares; retrain or use the model file it was trained with",
                          file=str(path), key="linkage.reuse_model")
    names = [c.name for c in spec.comparisons]
    labels = [c.level_labels() for c in spec.comparisons]
    tasks = {}
    for key, t in data["tasks"].items():
        m, u = [], []
        for j, name in enumerate(names):
            lv = {x["level"]: x for x in t["comparisons"][name]}
            mm = np.ones(len(labels[j]))
            uu = np.ones(len(labels[j]))
            for k, lab in enumerate(labels[j][1:], start=1):
                mm[k] = lv[lab]["m"]
                uu[k] = lv[lab]["u"]
            m.append(mm)
            u.append(uu)
        tasks[key] = TaskModel(float(t["lambda"]), m, u, "reused", t.get("expected_matches"))
    return Model(tasks, names, labels, sig, {"reused_from": str(path)})
