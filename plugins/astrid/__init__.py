"""AstrID: scheduled U-Net transient detection over telescope observations.

The core (everything here except :mod:`astrid.airflow`) never imports Airflow, so it can be
used from a notebook, the ``astrid`` CLI, or another orchestrator.
"""

__version__ = "0.1.0"

# ASTRID_INFERENCE_LOG_LEVEL / _LOG_ROTATION_MB apply in every process that uses the package.
from astrid.logs import _apply_at_import

_apply_at_import()
