"""Clustering linked pairs into people, respecting one-to-one constraints.

Plain connected components over-merge: one false link joins two people and
chains pull in more. Here:

1. Within-source duplicates (reapplicants, several specialty applications)
   are merged first into source *entities*, on forced links (identifier,
   clerical label) or a high dedupe threshold.
2. Cross-source links are lifted to entity pairs (best pair wins) and taken
   greedily, strongest first (forced first). A merge is refused when the
   merged cluster would hold two entities of the same source, i.e. a person
   has at most one training record, one admission applicant, one registrant.
   Two entities of a duplicated source may still meet when a within-source
   link above the ordinary threshold corroborates it.
3. Components with no possible conflict (at most one entity per source) are
   accepted as they are without the greedy loop, so the Python loop only sees
   the few contested components. Clerical `no match` labels are cannot-links.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from etl.linkage._np import unique


@dataclass
class ClusterResult:
    labels: np.ndarray           # cluster id per record (0..k-1, deterministic order)
    accepted: np.ndarray         # bool per input edge: used to join two clusters/entities
    stats: dict


def _components(n: int, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if li.size == 0:
        return np.arange(n)
    g = coo_matrix((np.ones(li.size, np.int8), (li, ri)), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    return lab


class _UF:
    def __init__(self, n: int):
        self.p = list(range(n))

    def find(self, x: int) -> int:
        p = self.p
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root


def cluster(n: int, src: np.ndarray, source_names: list[str], dup_sources: set[str],
            li: np.ndarray, ri: np.ndarray, prob: np.ndarray, weight: np.ndarray, forced: np.ndarray,
            threshold: float, dedupe_threshold: float,
            cannot: tuple[np.ndarray, np.ndarray] | None = None, one_to_one: bool = True) -> ClusterResult:
    li = li.astype(np.int64)
    ri = ri.astype(np.int64)
    same = src[li] == src[ri]
    dup_idx = {i for i, s in enumerate(source_names) if s in dup_sources}
    src_dup = np.isin(src[li], list(dup_idx)) if dup_idx else np.zeros(li.size, bool)
    cn_l = cannot[0].astype(np.int64) if cannot is not None else np.zeros(0, np.int64)
    cn_r = cannot[1].astype(np.int64) if cannot is not None else np.zeros(0, np.int64)
    cannot_set = set(zip(cn_l.tolist(), cn_r.tolist())) | set(zip(cn_r.tolist(), cn_l.tolist()))
    accepted = np.zeros(li.size, bool)

    # 1. within-source entities
    dd = same & src_dup & (forced | (prob >= dedupe_threshold))
    if cannot_set and dd.any():
        bad = np.array([(a, b) in cannot_set for a, b in zip(li[dd].tolist(), ri[dd].tolist())])
        idx = np.flatnonzero(dd)
        dd[idx[bad]] = False
    ent = _components(n, li[dd], ri[dd])
    accepted[dd] = True
    # corroborating within-source links (ordinary threshold) between entities
    corr = same & src_dup & ~dd & (prob >= threshold)
    corro = set(zip(ent[li[corr]].tolist(), ent[ri[corr]].tolist()))
    corro |= {(b, a) for a, b in corro}

    if not one_to_one:
        cross = ~same & (forced | (prob >= threshold))
        allL = np.concatenate([li[dd], li[cross]])
        allR = np.concatenate([ri[dd], ri[cross]])
        lab = _components(n, allL, allR)
        accepted |= cross
        return ClusterResult(_order(lab, src), accepted, {"method": "connected_components"})

    # 2. cross-source entity edges
    cross = ~same & (forced | (prob >= threshold))
    ci = np.flatnonzero(cross)
    el, er = ent[li[ci]], ent[ri[ci]]
    lo, hi = np.minimum(el, er), np.maximum(el, er)
    score = np.where(forced[ci], np.inf, weight[ci])
    edges = pl.DataFrame({"a": lo, "b": hi, "s": score, "i": ci}).sort(["s", "i"], descending=[True, False])
    edges = edges.unique(["a", "b"], keep="first", maintain_order=True)
    ea, eb, es, ei = (edges[c].to_numpy() for c in ("a", "b", "s", "i"))

    # entity source; components over entity edges
    comp = _components(n, ea, eb)
    ent_nodes = unique(ent)
    ent_src = np.full(n, -1, np.int64)
    ent_src[ent] = src  # every record's entity inherits its source (entities are single-source)
    # a component is contested if it holds two entities of one source, or a cannot-link
    ce = pl.DataFrame({"c": comp[ent_nodes], "e": ent_nodes, "s": ent_src[ent_nodes]})
    contested_c = ce.group_by(["c", "s"]).agg(pl.len().alias("k")).filter(pl.col("k") > 1)["c"].unique()
    contested = np.zeros(n, bool)
    contested[contested_c.to_numpy()] = True
    if cn_l.size:
        contested[comp[ent[cn_l]]] = True
        contested[comp[ent[cn_r]]] = True
    easy = ~contested[comp[ea]]
    accepted[ei[easy]] = True
    final = comp.copy()  # for easy components the component is the cluster

    # 3. greedy on contested components
    hard = np.flatnonzero(~easy)
    refused = 0
    refused_forced = 0
    if hard.size:
        uf = _UF(n)
        members_src: dict[int, dict[int, int]] = {}
        ents_of: dict[int, list[int]] = {}
        hard_nodes = unique(np.concatenate([ea[hard], eb[hard]]))
        for e in hard_nodes.tolist():
            members_src[e] = {int(ent_src[e]): e}
            ents_of[e] = [e]
        cannot_by_ent: dict[int, set[int]] = {}
        for a, b in zip(ent[cn_l].tolist(), ent[cn_r].tolist()):
            cannot_by_ent.setdefault(a, set()).add(b)
            cannot_by_ent.setdefault(b, set()).add(a)
        for k in hard.tolist():
            a, b = int(ea[k]), int(eb[k])
            ra, rb = uf.find(a), uf.find(b)
            if ra == rb:
                continue
            sa, sb = members_src[ra], members_src[rb]
            ok = True
            for s, e1 in sa.items():
                e2 = sb.get(s)
                if e2 is not None and (e1, e2) not in corro:
                    ok = False
                    break
            if ok and cannot_by_ent:
                eb_set = set(ents_of[rb])
                for e in ents_of[ra]:
                    if cannot_by_ent.get(e, set()) & eb_set:
                        ok = False
                        break
            if not ok:
                refused += 1
                refused_forced += int(np.isinf(es[k]))
                continue
            if len(ents_of[ra]) < len(ents_of[rb]):
                ra, rb = rb, ra
                sa, sb = sb, sa
            uf.p[rb] = ra
            for s, e in sb.items():
                sa.setdefault(s, e)
            ents_of[ra].extend(ents_of.pop(rb))
            del members_src[rb]
            accepted[ei[k]] = True
        # entity -> greedy root; records in hard components get a fresh label space
        root_of = np.arange(n)
        for e in hard_nodes.tolist():
            root_of[e] = uf.find(e)
        in_hard = np.zeros(n, bool)
        in_hard[hard_nodes] = True
        final = np.where(in_hard, n + root_of, final)
    lab = final[ent]
    stats = {"method": "constrained_greedy", "entity_edges": int(ea.size), "contested_edges": int(hard.size),
             "refused_links": int(refused), "refused_forced_links": int(refused_forced),
             "within_source_merges": int(dd.sum())}
    return ClusterResult(_order(lab, src), accepted, stats)


def _order(lab: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1 by their first record (source order, then input order)."""
    if lab.size == 0:
        return lab
    from etl.linkage._np import unique_inverse

    _, inv, _, first = unique_inverse(lab, first=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inv]
