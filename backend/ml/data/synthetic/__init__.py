"""The plant's synthetic world: tables generated with real structure, drift scenarios.

`init_db` fills an empty database, `simulate` appends days after the newest row; both are
deterministic for a seed. This package is the one writer of the logistics database.
"""

from backend.ml.data.synthetic.database import (
    DatabaseExistsError,
    database_has_data,
    generate,
    init_db,
    simulate,
    write_tables,
)
from backend.ml.data.synthetic.scenarios import SCENARIOS, Scenario, get_scenario
from backend.ml.data.synthetic.world import DESTINATIONS, MATERIALS, SHIPMENTS_PER_DAY

__all__ = ["DESTINATIONS", "MATERIALS", "SCENARIOS", "SHIPMENTS_PER_DAY", "DatabaseExistsError",
           "Scenario", "database_has_data", "generate", "get_scenario", "init_db", "simulate",
           "write_tables"]
