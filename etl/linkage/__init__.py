"""Record linkage: deterministic identifier pass + Fellegi-Sunter with
term-frequency adjustment, EM on comparison-pattern counts, and clustering
that respects one-to-one constraints between sources.

    from etl.linkage import link, load_spec, explain, read_labels
    spec = load_spec(config["linkage"], config_dir)
    summary = link({"admission": p1, "training": p2, ...}, spec, out_dir, truth=None)

See docs/linkage.md.
"""

from etl.linkage.engine import explain, link, plan_blocks, score_block
from etl.linkage.review import read_labels
from etl.linkage.spec import LinkSpec, load_spec, parse_model

__all__ = ["link", "load_spec", "parse_model", "explain", "read_labels", "LinkSpec", "plan_blocks", "score_block"]
