"""Daily housekeeping: metadata DB clean-up and task-log retention."""

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from astrid.airflow.dag_defaults import START_DATE_ISO, retry_policy
from astrid.airflow.maintenance import DbCleanOperator, PruneTaskLogsOperator
from astrid.config import load_config

config = load_config()

with DAG(
    "astrid_maintenance",
    schedule="30 3 * * *",
    start_date=pendulum.parse(START_DATE_ISO, tz=config.timezone),
    catchup=False,
    max_active_runs=1,
    max_consecutive_failed_dag_runs=3,
    tags=["astrid", "maintenance"],
    default_args=retry_policy(
        config, execution_timeout=timedelta(minutes=60), retry_delay=timedelta(minutes=5)
    ),
    doc_md=f"""
### AstrID maintenance

Applies the retention of **{config.log_retention_days} days** (`ASTRID_INFERENCE_LOG_RETENTION_DAYS`).
`db_clean` removes older task instances, runs, XComs and log rows from the metadata DB the way this
platform allows (`ASTRID_INFERENCE_DB_CLEAN={config.db_clean}`: the api-server's AstrID endpoint on
Astro, MWAA's CLI endpoint on MWAA, `airflow db clean` where the worker has the DB); where it
cannot, it is skipped with a message saying what to run instead, never failed. `prune_task_logs`
deletes local task log files past retention, independently. Remote logs on S3 are governed by the
bucket's lifecycle rules (docs/deploy.md).
""",
) as dag:
    # independent: a skipped (or failed) metadata clean-up must not stop the log pruning
    DbCleanOperator(
        task_id="db_clean",
        retention_days=config.log_retention_days,
        mode=config.db_clean,
        mwaa_environment=config.mwaa_environment,
    )
    PruneTaskLogsOperator(task_id="prune_task_logs", retention_days=config.log_retention_days)
