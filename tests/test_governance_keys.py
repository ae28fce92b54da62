"""Key handling: env var, key file permissions, refusal without a key, demo
mode, and the key never reaching any output."""

from __future__ import annotations

import base64
import json
import os
import pickle
import secrets
from pathlib import Path

import pytest

from etl.errors import GovernanceError
from etl.governance import load_key, load_rules, protect
from etl.governance.keys import NO_KEY, key_id
from etl.governance.synthetic import make_assembled


@pytest.fixture
def no_key_env(monkeypatch):
    monkeypatch.delenv("MEDLINK_KEY", raising=False)
    monkeypatch.delenv("MEDLINK_KEY_CREATED", raising=False)


def test_env_var_hex_and_base64(monkeypatch, no_key_env):
    raw = secrets.token_bytes(32)
    monkeypatch.setenv("MEDLINK_KEY", raw.hex())
    k = load_key()
    assert k.id == key_id(raw) and len(k.id) == 8 and k.source == "env:MEDLINK_KEY" and not k.demo
    monkeypatch.setenv("MEDLINK_KEY", base64.b64encode(raw).decode())
    assert load_key().id == k.id
    monkeypatch.setenv("MEDLINK_KEY_CREATED", "2020-01-01")
    meta = load_key().metadata()
    assert meta["rotation_due"] == "2020-12-31" and meta["rotation_overdue"] is True
    assert raw.hex() not in json.dumps(meta)


def test_key_is_never_shown_or_serialised(monkeypatch, no_key_env):
    raw = secrets.token_bytes(32)
    monkeypatch.setenv("MEDLINK_KEY", raw.hex())
    k = load_key()
    for text in (repr(k), str(k), f"{k}", json.dumps(k.metadata())):
        assert raw.hex() not in text and base64.b64encode(raw).decode() not in text
    with pytest.raises(GovernanceError, match="never serialised"):
        pickle.dumps(k)


def test_short_or_garbled_key_refused(monkeypatch, no_key_env):
    monkeypatch.setenv("MEDLINK_KEY", secrets.token_hex(8))
    with pytest.raises(GovernanceError, match="at least 256"):
        load_key()
    monkeypatch.setenv("MEDLINK_KEY", "not a key at all!")
    with pytest.raises(GovernanceError, match="neither hex nor base64"):
        load_key()


def test_key_file_permissions(tmp_path, no_key_env):
    raw = secrets.token_bytes(32)
    p = tmp_path / "medlink.key"
    p.write_text(raw.hex() + "\n")
    os.chmod(p, 0o600)
    k = load_key(key_file=p)
    assert k.id == key_id(raw) and k.source == "file:medlink.key" and k.created is not None
    for mode in (0o640, 0o604, 0o644, 0o660):
        os.chmod(p, mode)
        with pytest.raises(GovernanceError, match="chmod 600") as ei:
            load_key(key_file=p)
        assert raw.hex() not in str(ei.value)
    os.chmod(p, 0o600)
    binary = tmp_path / "raw.key"
    binary.write_bytes(b"\xff" + secrets.token_bytes(40))
    os.chmod(binary, 0o400)
    assert load_key(key_file=binary).length_bits == 41 * 8
    with pytest.raises(GovernanceError, match="not found"):
        load_key(key_file=tmp_path / "missing.key")


def test_env_and_file_must_agree(tmp_path, monkeypatch, no_key_env):
    p = tmp_path / "k"
    p.write_text(secrets.token_hex(32))
    os.chmod(p, 0o600)
    monkeypatch.setenv("MEDLINK_KEY", secrets.token_hex(32))
    with pytest.raises(GovernanceError, match="different keys"):
        load_key(key_file=p)
    monkeypatch.setenv("MEDLINK_KEY", p.read_text())
    assert load_key(key_file=p).source == "file:k"


def test_keyed_release_tokens_differ_per_release(monkeypatch, no_key_env):
    from etl.governance.keys import keyed_release_tokens, person_keys
    monkeypatch.setenv("MEDLINK_KEY", secrets.token_hex(32))
    k = load_key()
    pk = person_keys(k, ["p1", "p2"])
    a, b = keyed_release_tokens(k, "r1", pk), keyed_release_tokens(k, "r2", pk)
    assert a == keyed_release_tokens(k, "r1", pk) and not set(a) & set(b) and len(a[0]) == 32
    assert not set(a) & set(pk)


def test_no_key_refuses_unless_demo(no_key_env):
    with pytest.raises(GovernanceError) as ei:
        load_key()
    assert str(ei.value) == NO_KEY == ("refusing to publish without a key (set MEDLINK_KEY or key_file, "
                                       "or run in demo mode)")
    d = load_key(demo=True)
    assert d.demo and d.id.startswith("demo-") and d.source == "demo"
    assert load_key(demo=True).id == d.id            # fixed demo key


def test_key_never_in_any_output(tmp_path, monkeypatch, no_key_env):
    raw = secrets.token_bytes(32)
    monkeypatch.setenv("MEDLINK_KEY", raw.hex())
    key = load_key()
    doctors, events, vocab = make_assembled(2500, seed=11)
    src = tmp_path / "assembled"
    src.mkdir()
    doctors.write_parquet(src / "doctors.parquet")
    events.write_parquet(src / "events.parquet")
    stage, restricted = tmp_path / "stage", tmp_path / "restricted"
    summary = protect(src / "doctors.parquet", src / "events.parquet", load_rules("profile_a"), key, stage,
                      restricted, release_id="rk1", input_vocab=vocab)
    assert summary["key_id"] == key.id and not summary["demo"]
    needles = [f.encode() for f in key.fingerprints()] + [raw]
    files = [p for p in list(stage.rglob("*")) + list(restricted.rglob("*")) if p.is_file()]
    assert {p.name for p in stage.iterdir()} >= {"doctors.parquet", "events.parquet", "governance_report.json",
                                                  "governance_report.html"}
    for p in files:
        data = p.read_bytes()
        for n in needles:
            assert n not in data, f"key material in {p.name}"
    text = json.dumps(summary)
    assert raw.hex() not in text
    report = json.loads((stage / "governance_report.json").read_text())
    assert report["key"]["key_id"] == key.id and report["key"]["algorithm"] == "HMAC-SHA256"
    assert report["demo"] is False and "DEMO RELEASE" not in (stage / "governance_report.html").read_text()


def test_demo_release_is_labelled(tmp_path, no_key_env):
    doctors, events, vocab = make_assembled(2500, seed=12)
    doctors.write_parquet(tmp_path / "d.parquet")
    events.write_parquet(tmp_path / "e.parquet")
    s = protect(tmp_path / "d.parquet", tmp_path / "e.parquet", load_rules("profile_a"), load_key(demo=True),
                tmp_path / "stage", tmp_path / "restricted", release_id="demo1", input_vocab=vocab)
    assert s["demo"] is True and s["key_id"].startswith("demo-")
    r = json.loads(Path(s["report_json"]).read_text())
    assert r["demo"] is True and r["key"]["demo"] is True
    html = Path(s["report_html"]).read_text()
    assert "DEMO RELEASE" in html and "(DEMO)" in html


def test_concurrent_crosswalk_writes_keep_every_release(tmp_path):
    """Several runs adding their release's rows to the restricted crosswalk at once:
    each read-add-write holds a lock and uses its own temporary file, so no run fails
    on a renamed-away temporary and no release's rows are lost (a clean-clone CI run
    once lost a concurrent run to exactly that race)."""
    import threading

    import polars as pl

    from etl.governance.protect import _write_crosswalk

    rules = load_rules("profile_a")
    pid = rules.pseudonym_output
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            for j in range(5):
                mapping = pl.DataFrame({"person_id": [f"p{i}-{k}" for k in range(50)],
                                        "person_key": [f"k{i}-{k}" for k in range(50)],
                                        pid: [f"t{i}-{j}-{k}" for k in range(50)]})
                events = pl.DataFrame({"source": ["training"] * 50, "record_id": [f"r{i}-{k}" for k in range(50)],
                                       "person_id": [f"p{i}-{k}" for k in range(50)]})
                _write_crosswalk(events, mapping, rules, f"release-{i}-{j}", tmp_path)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    cw = pl.read_parquet(tmp_path / "crosswalk.parquet")
    assert cw["release_id"].n_unique() == 20 and cw.height == 20 * 50
    assert not list(tmp_path.glob(".crosswalk.parquet*.tmp"))
