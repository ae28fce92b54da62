"""medlink: link, pseudonymise and publish UK doctors' career records.

`etl` holds the stage logic as plain functions (no Prefect import);
`flows` wires them into Prefect flows.
"""

__version__ = "0.1.0"
