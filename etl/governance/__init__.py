"""Pseudonymisation and disclosure control under declarative rules.

    from etl.governance import load_rules, load_key, protect, scan_release, disclosure_control

- `load_rules(name_or_path)`: validate `schemas/rules/<name>.yaml` (ConfigError
  naming file and key on a bad rule);
- `load_key(env_var, key_file, demo)`: the pseudonymisation key (never shown);
- `protect(doctors, events, rules, key, staging_dir, restricted_dir, ...)`:
  release tables + governance report, or GovernanceError;
- `scan_release(release_dir, input_vocab)`: leak-scanner counts;
- `disclosure_control(table, count_columns, rules)`: aggregate SDC.

See docs/governance.md.
"""

from etl.governance.keys import Key, load_key
from etl.governance.protect import protect
from etl.governance.rules import Rules, load_rules
from etl.governance.scanner import scan_release
from etl.governance.sdc import disclosure_control, hesa_round, to_csv_frame

__all__ = ["Key", "Rules", "disclosure_control", "hesa_round", "load_key", "load_rules", "protect",
           "scan_release", "to_csv_frame"]
