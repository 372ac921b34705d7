"""The heavy imports of AstrID's task code, in one module a long-lived parent can import up front.

Each Airflow task runs in a process forked from its executor worker. Whatever that worker has
already imported, the task inherits for free (copy-on-write); whatever it has not, every task
imports again: Great Expectations (the quality gate), torch (the U-Net), MLflow (the registry),
astropy. On this project's 2-core machine that is seconds per task, most of a realtime run's
latency (docs/benchmarks.md, "Arrival latency").

Airflow 3.3 lets a component start its workers from a ``forkserver`` that imports a module list
first::

    AIRFLOW__SCHEDULER__MP_START_METHOD=forkserver
    AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD=airflow,airflow.executors.local_executor,astrid.preload

(the scheduler's LocalExecutor; Celery has ``[celery] mp_forkserver_preload`` for its own helpers).
``make up`` sets it. Importing this module only imports: it starts no thread, opens no file or
connection, so forking after it is as safe as forking after any import.
"""

from __future__ import annotations

import astropy.io.fits  # noqa: F401 - FITS reading in every task
import great_expectations  # noqa: F401 - the quality gate (the slowest import of all)
import mlflow  # noqa: F401 - the model registry
import sqlalchemy  # noqa: F401 - the catalog
import torch  # noqa: F401 - the U-Net

import astrid.catalog
import astrid.ml.engine
import astrid.pipeline
import astrid.quality
import astrid.registry  # noqa: F401
