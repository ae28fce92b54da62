"""The pseudonymisation key, internal person keys and release pseudonyms.

- The key comes from an environment variable (hex or base64, >= 256 bits) or a
  key file readable by its owner only; never from the repo, config or logs.
  Without one, publishing is refused unless the run is explicitly in demo
  mode, which uses a fixed, public, clearly labelled demo key and marks the
  release DEMO.
- `Key` never shows its secret: not in repr/str, not in `metadata()`, and it
  refuses to be pickled (so it cannot end up in a Prefect result or cache).
- Internal person key = HMAC-SHA256(key, "person|" + person_id), kept only in
  the restricted crosswalk.
- Release pseudonym (`doctor_pid`) = a fresh random 128-bit token per person
  per release (`secrets`), stored in the crosswalk; reruns of the same release
  reuse it. It is not derived from any identifier, so a leaked key does not
  open a release, and two releases cannot be joined without the crosswalk.
  `keyed_release_hmac` (HMAC of the person key under a per-release derived
  key) is available for deployments that cannot keep a crosswalk.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from etl.errors import GovernanceError

ALGORITHM = "HMAC-SHA256"
MIN_BYTES = 32
DEMO_SECRET = hashlib.sha256(b"medlink DEMO key - public, not secret - never use on real data").digest()
NO_KEY = "refusing to publish without a key (set MEDLINK_KEY or key_file, or run in demo mode)"


@dataclass(frozen=True, repr=False, eq=False)
class Key:
    id: str
    algorithm: str
    source: str                              # env:<NAME> | file:<name> | demo
    demo: bool
    created: dt.date | None
    rotate_after_days: int
    length_bits: int
    _secret: bytes = field(repr=False, compare=False)

    # never show or serialise the secret
    def __repr__(self) -> str:
        return (f"Key(id={self.id!r}, algorithm={self.algorithm!r}, source={self.source!r}"
                f"{', DEMO' if self.demo else ''})")

    __str__ = __repr__

    def __getstate__(self):
        raise GovernanceError("a Key is never serialised; load it inside the task that needs it")

    def __reduce_ex__(self, protocol):
        raise GovernanceError("a Key is never serialised; load it inside the task that needs it")

    @property
    def rotation_due(self) -> dt.date | None:
        return self.created + dt.timedelta(days=self.rotate_after_days) if self.created else None

    def metadata(self, today: dt.date | None = None) -> dict:
        today = today or dt.date.today()
        due = self.rotation_due
        return {"key_id": self.id, "algorithm": self.algorithm, "length_bits": self.length_bits,
                "source": self.source, "demo": self.demo,
                "created": self.created.isoformat() if self.created else None,
                "rotate_after_days": self.rotate_after_days,
                "rotation_due": due.isoformat() if due else None,
                "rotation_overdue": bool(due and today > due)}

    # ------------------------------------------------------------------ use
    def hmac_hex(self, domain: str, values: Iterable[str]) -> list[str]:
        """HMAC-SHA256(key, domain + value) as hex, for each value."""
        base = hmac.new(self._secret, digestmod=hashlib.sha256)
        out = []
        d = domain.encode()
        for v in values:
            h = base.copy()
            h.update(d + str(v).encode())
            out.append(h.hexdigest())
        return out

    def derive(self, label: str) -> bytes:
        """A sub-key for one purpose (e.g. one release), HMAC(key, "derive|" + label)."""
        return hmac.new(self._secret, b"derive|" + label.encode(), hashlib.sha256).digest()

    def fingerprints(self) -> list[str]:
        """Encodings of the secret a leak check should look for in outputs."""
        s = self._secret
        return [s.hex(), s.hex().upper(), base64.b64encode(s).decode(),
                base64.urlsafe_b64encode(s).decode(), base64.b64encode(s).decode().rstrip("=")]


def key_id(secret: bytes) -> str:
    return hmac.new(secret, b"key-id", hashlib.sha256).hexdigest()[:8]


def _decode(text: str, where: str) -> bytes:
    t = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]+", t) and len(t) % 2 == 0:
        b = bytes.fromhex(t)
    else:
        try:
            if re.fullmatch(r"[A-Za-z0-9+/]+=*", t):
                b = base64.b64decode(t + "=" * (-len(t) % 4))
            elif re.fullmatch(r"[A-Za-z0-9_\-]+=*", t):
                b = base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))
            else:
                raise ValueError
        except ValueError:          # binascii.Error included
            raise GovernanceError(f"{where}: the key is neither hex nor base64") from None
    if len(b) < MIN_BYTES:
        raise GovernanceError(f"{where}: the key is {len(b) * 8} bits; at least {MIN_BYTES * 8} are required")
    return b


def _created_from_env() -> dt.date | None:
    v = os.environ.get("MEDLINK_KEY_CREATED")
    if not v:
        return None
    try:
        return dt.date.fromisoformat(v.strip())
    except ValueError:
        raise GovernanceError("MEDLINK_KEY_CREATED must be an ISO date (YYYY-MM-DD)") from None


def load_key(env_var: str = "MEDLINK_KEY", key_file: str | Path | None = None, demo: bool = False,
             *, rotate_after_days: int = 365) -> Key:
    """The pseudonymisation key.

    Sources: the environment variable `env_var` (if set and non-empty) and
    `key_file`; when both are given they must hold the same key. In demo mode the fixed demo key is used whatever is set (the
    release is labelled DEMO). No key and not demo -> GovernanceError.
    A key file must be a regular file not readable or writable by group or
    others (chmod 600); its contents are hex, base64 or >= 32 raw bytes.
    Creation date: MEDLINK_KEY_CREATED (ISO date) if set, else the key file's
    modification date; rotation is due `rotate_after_days` later.
    """
    if demo:
        return Key(id="demo-" + key_id(DEMO_SECRET), algorithm=ALGORITHM, source="demo", demo=True,
                   created=None, rotate_after_days=rotate_after_days, length_bits=256,
                   _secret=DEMO_SECRET)
    val = os.environ.get(env_var) if env_var else None
    env_key = None
    if val and val.strip():
        secret = _decode(val, f"environment variable {env_var}")
        env_key = Key(id=key_id(secret), algorithm=ALGORITHM, source=f"env:{env_var}", demo=False,
                      created=_created_from_env(), rotate_after_days=rotate_after_days,
                      length_bits=len(secret) * 8, _secret=secret)
        if not key_file:
            return env_key
    if key_file:
        p = Path(key_file)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise GovernanceError("key file not found", file=str(p)) from None
        if not stat.S_ISREG(st.st_mode):
            raise GovernanceError("key file is not a regular file", file=str(p))
        if os.name == "posix" and st.st_mode & 0o077:
            raise GovernanceError(f"key file permissions {stat.filemode(st.st_mode)} let group or others "
                                  f"read or write it; chmod 600 it", file=str(p))
        data = p.read_bytes()
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            secret = data                                  # raw random bytes
        else:
            secret = _decode(text, f"key file {p.name}")
        if len(secret) < MIN_BYTES:
            raise GovernanceError(f"key file holds fewer than {MIN_BYTES * 8} bits", file=str(p))
        created = _created_from_env() or dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).date()
        file_key = Key(id=key_id(secret), algorithm=ALGORITHM, source=f"file:{p.name}", demo=False,
                       created=created, rotate_after_days=rotate_after_days,
                       length_bits=len(secret) * 8, _secret=secret)
        if env_key is not None and env_key.id != file_key.id:
            raise GovernanceError(f"{env_var} and the key file hold different keys; unset one", file=str(p))
        return file_key
    raise GovernanceError(NO_KEY)


# ---------------------------------------------------------------------- pseudonyms

def person_keys(key: Key, person_ids: Iterable[str]) -> list[str]:
    """Internal person keys (restricted zone only)."""
    return key.hmac_hex("person|", person_ids)


def random_tokens(n: int, nbytes: int = 16, avoid: set[str] | None = None) -> list[str]:
    """n distinct random hex tokens, none in `avoid`."""
    avoid = avoid or set()
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        need = n - len(out)
        buf = secrets.token_bytes(nbytes * need)
        for i in range(need):
            t = buf[i * nbytes:(i + 1) * nbytes].hex()
            if t not in seen and t not in avoid:
                seen.add(t)
                out.append(t)
    return out


def keyed_release_tokens(key: Key, release_id: str, pkeys: Iterable[str], nbytes: int = 16) -> list[str]:
    """Per-release keyed tokens: HMAC(derive("release|id"), person_key), truncated."""
    rk = key.derive(f"release|{release_id}")
    base = hmac.new(rk, digestmod=hashlib.sha256)
    out = []
    for pk in pkeys:
        h = base.copy()
        h.update(pk.encode())
        out.append(h.hexdigest()[:nbytes * 2])
    return out
