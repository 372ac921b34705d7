"""AstrID: scheduled U-Net transient detection over telescope observations.

The core (everything here except :mod:`astrid.airflow`) never imports Airflow, so it can be
used from a notebook, the ``astrid`` CLI, or another orchestrator.
"""

__version__ = "0.1.0"
