"""Resume a failed run from the stages that finished, never across inputs.

Each finished stage writes `<run_dir>/_flow/<stage>.done.json` holding its
summary and a fingerprint of everything it depended on:

    run fingerprint   sha256 of each delivery file, cfg.config_hash(), the
                      files the config refers to (schemas/, expectations/,
                      linkage model, rules), the etl/ source code, the truth
                      file if given and a salted digest of the key material
    stage name        e.g. "ingest:admission"
    upstream          the upstream stages' summaries (a recomputed upstream
                      stage therefore invalidates everything after it)

A stage is skipped only when its marker's fingerprint matches AND every file
its summary names still exists with the size and mtime recorded when it
finished. The markers live in the restricted run directory beside the data
they describe; Prefect persists nothing (why not Prefect's own cache:
docs/orchestration.md "Resume").

`<run_dir>/_flow/run.json` records the run's fingerprint and status, so a
rerun of the same delivery with the same config finds an unfinished run and
reuses its run_id (the stages' output paths contain the run_id).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from etl.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOW_DIR = "_flow"
PATH_KEYS = ("path", "_path", "_dir", "_file")


# --------------------------------------------------------------------------- hashing

def _sha256_file(p: Path, h=None):
    own = h is None
    h = h or hashlib.sha256()
    with p.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest() if own else h


def _tree_digest(paths: list[Path], patterns: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for root in paths:
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(f for pat in patterns for f in root.rglob(pat)
                           if f.is_file() and "__pycache__" not in f.parts)
        else:
            continue
        for f in files:
            h.update(str(f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f).encode())
            h.update(b"\0")
            _sha256_file(f, h)
    return h.hexdigest()


def _referenced_files(raw: Any, base: Path) -> list[Path]:
    """Files a config value names (linkage model, labels, rules file, ...)."""
    out = []
    if isinstance(raw, dict):
        for v in raw.values():
            out += _referenced_files(v, base)
    elif isinstance(raw, list):
        for v in raw:
            out += _referenced_files(v, base)
    elif isinstance(raw, str) and len(raw) < 4096 and ("/" in raw or "." in raw):
        p = Path(raw) if Path(raw).is_absolute() else base / raw
        try:
            if p.is_file():
                out.append(p.resolve())
        except OSError:
            pass
    return out


def _key_digest(cfg: Config) -> str:
    """A salted digest of the pseudonymisation key material, so a new key
    invalidates protect and after. Kept only in the restricted zone."""
    gov = cfg.governance or {}
    material = b""
    env = gov.get("key_env") or "MEDLINK_KEY"
    if os.environ.get(env):
        material += os.environ[env].encode()
    kf = gov.get("key_file")
    if kf and Path(kf).is_file():
        material += Path(kf).read_bytes()
    material += b"demo" if gov.get("demo") else b""
    return hashlib.sha256(b"medlink-resume-v1\0" + material).hexdigest()[:16]


def run_fingerprint(cfg: Config, truth: Path | None = None) -> dict:
    """Everything a run's outputs depend on, as digests (no values)."""
    fp = {
        "config": cfg.config_hash(),
        "inputs": {name: _sha256_file(s.path) for name, s in cfg.sources.items()},
        "referenced": _tree_digest(sorted(set(_referenced_files(cfg.raw, cfg.path.parent))
                                          - {s.path.resolve() for s in cfg.sources.values()}), ("*",)),
        "schemas": _tree_digest([REPO_ROOT / "schemas", REPO_ROOT / "expectations"],
                                ("*.yaml", "*.yml", "*.json", "*.csv")),
        "code": _tree_digest([REPO_ROOT / "etl"], ("*.py",)),
        "key": _key_digest(cfg),
        "truth": _sha256_file(Path(truth)) if truth else None,
    }
    fp["digest"] = digest(fp)
    return fp


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_fingerprint(run_fp: str, stage: str, upstream: Any) -> str:
    return digest({"run": run_fp, "stage": stage, "upstream": upstream})


# --------------------------------------------------------------------------- markers

def _named_files(summary: Any) -> list[str]:
    """Paths a summary names (keys 'path', '*_path', '*_dir', '*_file')."""
    out = []
    if isinstance(summary, dict):
        for k, v in summary.items():
            if isinstance(v, str) and (k == "path" or k.endswith(PATH_KEYS)):
                out.append(v)
            elif isinstance(v, (dict, list)):
                out += _named_files(v)
    elif isinstance(summary, list):
        for v in summary:
            out += _named_files(v)
    return out


def _stat(p: str) -> list | None:
    try:
        st = Path(p).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns] if Path(p).is_file() else ["dir"]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _marker(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / FLOW_DIR / (stage.replace(":", "--").replace("/", "_") + ".done.json")


def load_done(run_dir: Path, stage: str, fingerprint: str) -> dict | None:
    """The stage's summary if it finished with this fingerprint and its files are intact."""
    m = _marker(run_dir, stage)
    try:
        rec = json.loads(m.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != fingerprint:
        return None
    for p, st in (rec.get("files") or {}).items():
        if _stat(p) != st:
            return None
    return rec.get("summary")


def save_done(run_dir: Path, stage: str, fingerprint: str, summary: dict, attempt: str) -> None:
    files = {p: _stat(p) for p in _named_files(summary)}
    files = {p: s for p, s in files.items() if s is not None}
    _atomic_write(_marker(run_dir, stage), json.dumps(
        {"stage": stage, "fingerprint": fingerprint, "attempt": attempt, "finished": time.time(),
         "files": files, "summary": summary}, default=str, sort_keys=True))


def attempts(run_dir: Path) -> dict[str, str]:
    """stage -> attempt id that produced its marker."""
    out = {}
    d = Path(run_dir) / FLOW_DIR
    for m in d.glob("*.done.json") if d.is_dir() else []:
        try:
            rec = json.loads(m.read_text())
            out[rec["stage"]] = rec.get("attempt")
        except (OSError, ValueError, KeyError):
            continue
    return out


# --------------------------------------------------------------------------- run records

def write_run(run_dir: Path, run_id: str, fingerprint: str, status: str, **extra) -> None:
    _atomic_write(Path(run_dir) / FLOW_DIR / "run.json", json.dumps(
        {"run_id": run_id, "fingerprint": fingerprint, "status": status, "updated": time.time(), **extra},
        default=str, sort_keys=True))


def read_run(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / FLOW_DIR / "run.json").read_text())
    except (OSError, ValueError):
        return None


def published_unchanged(releases_dir: Path, runs_dir: Path, delivery_digest: str) -> str | None:
    """The current release's id when the run that published it had this delivery digest
    (the same inputs, referenced files, config, schemas, code and key), else None."""
    try:
        rid = (Path(releases_dir) / "CURRENT").read_text().strip()
    except OSError:
        return None
    rec = read_run(Path(runs_dir) / rid) if rid else None
    if (rec and rec.get("status") == "completed" and rec.get("delivery_digest") == delivery_digest
            and (Path(releases_dir) / rid).is_dir()):
        return rid
    return None


def find_unfinished(runs_dir: Path, fingerprint: str) -> str | None:
    """The newest run of this exact fingerprint that did not complete, if any."""
    best = None
    for rj in Path(runs_dir).glob(f"*/{FLOW_DIR}/run.json"):
        try:
            rec = json.loads(rj.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("fingerprint") == fingerprint and rec.get("status") != "completed":
            if best is None or rec.get("updated", 0) > best[0]:
                best = (rec.get("updated", 0), rec.get("run_id"))
    return best[1] if best else None
