"""Nightly drift check: the serving model's inputs and outputs against its reference window."""

from airflow.sdk import DAG

from astrid.airflow.assets import MODEL_DRIFT, RequestRetrainingOperator
from astrid.airflow.dag_defaults import dag_kwargs
from astrid.airflow.drift import DriftCheckOperator
from astrid.config import load_config

config = load_config()

DOC = f"""
### AstrID nightly drift check

Compares the last **{config.drift_window_hours} h** of the champion's inferences with its reference
window (its first {config.drift_reference_hours} h of serving): the detection score distribution,
detections per Mpix, the inputs' sky, seeing and noise (recorded at inference time) and the
quality gate's rejection rate. Test: two-sample Kolmogorov–Smirnov per statistic; drift when
D ≥ {config.drift_threshold} **and** p < {config.drift_p_value}/6 (Bonferroni), with at least
{config.drift_min_samples} values a side (`docs/runbook.md#drift`, `astrid/drift.py`).

On drift: a `drift` alert (email + Slack, with the statistics table; cool-down
{config.alert_cooldown_minutes} min) and `request_retraining` updates the `astrid_model_drift`
Asset, which starts `astrid_model_training`. Each statistic's D goes to StatsD
(`astrid.drift.*`, Grafana "Model drift" panel). Schedule `{config.schedule("drift")}`
({config.timezone}); SLA: late after {config.drift_deadline_minutes} min.
"""

with DAG(**dag_kwargs("drift", config, doc_md=DOC, tags=["drift", "mlops"], params={})) as dag:
    report = DriftCheckOperator(
        task_id="drift_check",
        window_hours=config.drift_window_hours,
        reference_hours=config.drift_reference_hours,
        min_samples=config.drift_min_samples,
        threshold=config.drift_threshold,
        p_value=config.drift_p_value,
    )
    report >> RequestRetrainingOperator(
        task_id="request_retraining",
        reason="{{ ti.xcom_pull(task_ids='drift_check')['reason'] }}",
        outlets=[MODEL_DRIFT],
    )
