"""Where the project's data files live.

`schemas/` and `expectations/` are data the code reads. They sit at the top
of the repository (the package is installed editable, see README); set
MEDLINK_HOME to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = Path(os.environ.get("MEDLINK_HOME", Path(__file__).resolve().parent.parent))
SCHEMAS_DIR = HOME / "schemas"
CONTRACTS_DIR = SCHEMAS_DIR / "contracts"
REFERENCE_DIR = SCHEMAS_DIR / "reference"
RULES_DIR = SCHEMAS_DIR / "rules"
LINKAGE_DIR = SCHEMAS_DIR / "linkage"
EXPECTATIONS_DIR = HOME / "expectations"
