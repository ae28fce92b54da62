"""Recording errors and name-format variation (domain.md §3.2), applied per record.

Rates are vectorised masks; the string edits themselves run only on the few
selected rows (1-5% of a column), so no per-person Python loop touches the
bulk of the data. Every planted error is reported as a tag per record.
"""
from __future__ import annotations

import numpy as np

from .names import ENGLISH_GIVEN_F, ENGLISH_GIVEN_M, NICKNAMES, TRANSLIT

KEYBOARD = {
    "q": "wa", "w": "qes", "e": "wrd", "r": "etf", "t": "ryg", "y": "tuh", "u": "yij", "i": "uok",
    "o": "ipl", "p": "ol", "a": "qsz", "s": "adwx", "d": "sfec", "f": "dgrv", "g": "fhtb",
    "h": "gjyn", "j": "hkum", "k": "jli", "l": "kop", "z": "asx", "x": "zsc", "c": "xdv",
    "v": "cfb", "b": "vgn", "n": "bhm", "m": "nj",
}


def typo(s: str, r: np.random.Generator) -> str:
    """One keying error: adjacent-key substitution, deletion, insertion or transposition."""
    if len(s) < 2:
        return s + "e"
    letters = [i for i, ch in enumerate(s) if ch.isalpha()]
    i = letters[int(r.integers(0, len(letters)))] if letters else 0
    op = r.random()
    ch = s[i]
    if op < 0.45 and ch.lower() in KEYBOARD:
        nb = KEYBOARD[ch.lower()]
        c = nb[int(r.integers(0, len(nb)))]
        c = c.upper() if ch.isupper() else c
        out = s[:i] + c + s[i + 1:]
    elif op < 0.65 and len(s) > 2:
        out = s[:i] + s[i + 1:]
    elif op < 0.80:
        out = s[:i] + ch.lower() + s[i:] if i > 0 else s[0] + s[0].lower() + s[1:]
    else:
        j = min(i + 1, len(s) - 1)
        if j == i:
            i, j = i - 1, i
        out = s[:i] + s[j] + s[i] + s[j + 1:]
    if out == s:   # e.g. transposing "ll": delete instead
        out = s[:i] + s[i + 1:] if len(s) > 2 else s + "a"
    return out


def _translit(name: str, r) -> str | None:
    toks = name.split(" ")
    hits = [k for k, t in enumerate(toks) if t in TRANSLIT]
    if not hits:
        return None
    k = hits[int(r.integers(0, len(hits)))]
    alts = TRANSLIT[toks[k]]
    toks[k] = alts[int(r.integers(0, len(alts)))]
    return " ".join(toks)


def format_variation(given, middle, surname, fo, sex, sel: np.ndarray, r: np.random.Generator):
    """Apply one name-format variation to each selected row (in place). Returns op name per row."""
    ops = np.full(len(given), "", dtype=object)
    for i in np.flatnonzero(sel):
        g, m, s = given[i], middle[i], surname[i]
        cands = []
        if _translit(g, r) or _translit(s, r):
            cands += ["translit"] * 3
        cands.append("order_swap")
        if fo[i] == "CHN":
            cands += ["order_swap", "anglicised", "anglicised"]
        if " " in s or "-" in s:
            cands += ["surname_split_join"] * 2
        if m:
            cands += ["middle_promoted", "middle_dropped"]
        if g in NICKNAMES:
            cands.append("anglicised")
        op = cands[int(r.integers(0, len(cands)))]
        if op == "translit":
            g2 = _translit(g, r)
            if g2 and (r.random() < 0.6 or not _translit(s, r)):
                given[i] = g2
            else:
                surname[i] = _translit(s, r) or s
        elif op == "order_swap":
            given[i], surname[i] = s, g
        elif op == "surname_split_join":
            if "-" in s:
                surname[i] = s.replace("-", " ") if r.random() < 0.5 else s.split("-")[-1]
            elif r.random() < 0.5:
                surname[i] = s.replace(" ", "")
            else:
                surname[i] = s.replace(" ", "-")
        elif op == "middle_promoted":
            given[i], middle[i] = m, g
        elif op == "middle_dropped":
            middle[i] = ""
        elif op == "anglicised":
            if g in NICKNAMES:
                given[i] = NICKNAMES[g]
            else:
                pool = ENGLISH_GIVEN_M if sex[i] == "M" else ENGLISH_GIVEN_F
                given[i] = pool[int(r.integers(0, len(pool)))]
        ops[i] = op
    return ops


def dob_errors(dob: np.ndarray, sel: np.ndarray, r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """DOB keying errors on selected rows: 1/3 day-month swap (day<=12), 1/3 one day digit,
    1/6 year +-1, 1/6 other (month +-1 or 1 January default) [assumption on the mix, S42]."""
    out = dob.copy()
    kind = np.full(len(dob), "", dtype=object)
    idx = np.flatnonzero(sel)
    if not len(idx):
        return out, kind
    d = dob[idx]
    y = d.astype("datetime64[Y]").astype(int) + 1970
    mo = d.astype("datetime64[M]").astype(int) % 12 + 1
    dy = (d - d.astype("datetime64[M]")).astype(int) + 1
    u = r.random(len(idx))
    k = np.where(u < 1 / 3, 0, np.where(u < 2 / 3, 1, np.where(u < 5 / 6, 2, 3)))
    k = np.where((k == 0) & ((dy > 12) | (dy == mo)), 1, k)       # swap impossible -> digit error
    ny, nm, nd = y.copy(), mo.copy(), dy.copy()
    sw = k == 0
    nm[sw], nd[sw] = dy[sw], mo[sw]
    dg = k == 1
    units = nd % 10
    tens = nd // 10
    alt_unit = (units + r.integers(1, 10, len(idx))) % 10
    alt_tens = (tens + r.integers(1, 3, len(idx))) % 3
    use_unit = r.random(len(idx)) < 0.7
    cand = np.where(use_unit, tens * 10 + alt_unit, alt_tens * 10 + units)
    cand = np.where((cand < 1) | (cand > 28), np.where(nd <= 27, nd + 1, nd - 10), cand)
    nd[dg] = cand[dg]
    yr = k == 2
    ny[yr] = y[yr] + np.where(r.random(len(idx)) < 0.5, -1, 1)[yr]
    ot = k == 3
    jan = r.random(len(idx)) < 0.3
    nm[ot] = np.where(jan, 1, np.where(mo == 12, 11, mo + 1))[ot]
    nd[ot & jan] = 1
    nd = np.minimum(nd, 28 + (nm != 2) * 2 + np.isin(nm, [1, 3, 5, 7, 8, 10, 12]))
    nd = np.where((nm == 2) & (nd > 28), 28, nd)
    new = (np.array(ny - 1970).astype("datetime64[Y]").astype("datetime64[M]") + (nm - 1)).astype("datetime64[D]") + (nd - 1)
    same = new == d
    new[same] = d[same] + 1
    out[idx] = new
    kind[idx] = np.array(["dob_swap", "dob_digit", "dob_year", "dob_other"], dtype=object)[k]
    return out, kind


def digit_errors(ids: np.ndarray, typo_sel: np.ndarray, trans_sel: np.ndarray, r) -> np.ndarray:
    """Substitute one digit (typo) or swap two adjacent differing digits (transposition)."""
    out = ids.copy()
    for i in np.flatnonzero(typo_sel):
        s = out[i]
        if not s:
            continue
        k = int(r.integers(0, len(s)))
        out[i] = s[:k] + str((int(s[k]) + int(r.integers(1, 10))) % 10) + s[k + 1:]
    for i in np.flatnonzero(trans_sel & ~typo_sel):
        s = out[i]
        ks = [k for k in range(len(s) - 1) if s[k] != s[k + 1]]
        if s and ks:
            k = ks[int(r.integers(0, len(ks)))]
            out[i] = s[:k] + s[k + 1] + s[k] + s[k + 2:]
    return out


def record_noise(r: np.random.Generator, em, errmult: np.ndarray, given, middle, surname, dob, sex, fo):
    """Apply format variation, typos, DOB and sex errors to one source's records.

    Inputs are per-record arrays (copied). Returns the noisy arrays and a dict
    tag -> boolean mask of planted errors."""
    n = len(given)
    given, middle, surname = given.copy(), middle.copy(), surname.copy()
    fmt_sel = r.random(n) < em.name_format_base * errmult
    ops = format_variation(given, middle, surname, fo, sex, fmt_sel, r)
    ft = r.random(n) < em.forename_typo
    for i in np.flatnonzero(ft):
        given[i] = typo(given[i], r)
    stp = r.random(n) < em.surname_typo
    for i in np.flatnonzero(stp):
        surname[i] = typo(surname[i], r)
    dsel = r.random(n) < em.dob_error
    dob2, dkind = dob_errors(dob, dsel, r)
    ssel = r.random(n) < em.sex_error
    sex2 = np.where(ssel, np.where(sex == "M", "F", "M"), sex).astype(object)
    tags = {"name_format": fmt_sel, "forename_typo": ft, "surname_typo": stp, "dob_error": dsel,
            "sex_error": ssel}
    for op in ("translit", "order_swap", "surname_split_join", "middle_promoted", "middle_dropped", "anglicised"):
        tags["fmt_" + op] = ops == op
    for kd in ("dob_swap", "dob_digit", "dob_year", "dob_other"):
        tags[kd] = dkind == kd
    return given, middle, surname, dob2, sex2, tags
