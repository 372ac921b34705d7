"""The DAGs under a real `airflow standalone` (scheduler + LocalExecutor + triggerer), driven the
way users drive them: the REST API with conf. The realtime deadline is set to 6 s, shorter than a
run's work, so the SLA-missed email must arrive at the real SMTP server (aiosmtpd)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.standalone, pytest.mark.slow]


@pytest.fixture(scope="module")
def seeded(standalone):
    from astrid.survey import seed_survey

    return seed_survey(
        4,
        size=256,
        seed=51000,
        catalog_url=standalone.env["ASTRID_CATALOG_URL"],
        storage_root=standalone.env["ASTRID_STORAGE_ROOT"],
        prefix="rest",
    )


def test_rest_trigger_with_conf_runs_realtime_and_sla_email_arrives(standalone, smtp_sink, seeded):
    from astrid.catalog import Catalog

    run_id = standalone.trigger(
        "astrid_realtime_inference", {"max_observations": 2, "confidence_threshold": 0.6}
    )
    run = standalone.wait_for_run("astrid_realtime_inference", run_id, timeout=420)
    assert run["state"] == "success", (
        standalone.task_states("astrid_realtime_inference", run_id),
        standalone.log_tail(),
    )
    assert run["conf"] == {"max_observations": 2, "confidence_threshold": 0.6}
    catalog = Catalog(standalone.env["ASTRID_CATALOG_URL"])
    # (unpausing also lets the scheduler start the latest cron run, which claims the rest)
    ours = next(r for r in catalog.runs(dag_id="astrid_realtime_inference") if r["run_id"] == run_id)
    assert ours["processed"] == 2 and ours["claimed"] == 2 and ours["status"] == "success"
    assert catalog.status_counts()["claimed"] == 0
    email = smtp_sink.wait_for(
        lambda m: "SLA missed: astrid_realtime_inference" in (m["Subject"] or ""), timeout=180
    )
    # every realtime run in this session misses its 6 s deadline; the first one alerted, and the
    # cool-down (persisted per DAG) holds back the rest — so the email names *a* realtime run
    late_run = email["Subject"].split(" run ", 1)[1].removesuffix(" is late")
    assert standalone.api("GET", f"/api/v2/dags/astrid_realtime_inference/dagRuns/{late_run}").ok
    assert "oncall@example.org" in email["To"]
    sla = [m for m in smtp_sink.messages if "SLA missed: astrid_realtime_inference" in (m["Subject"] or "")]
    assert len(sla) == 1, [m["Subject"] for m in sla]


@pytest.mark.parametrize(
    "conf",
    [
        {"max_observations": -1},
        {"max_observations": 10**9},
        {"confidence_threshold": 1.5},
        {"model_version": "../../etc"},
    ],
)
def test_invalid_trigger_conf_is_refused_by_the_api(standalone, conf):
    r = standalone.api(
        "POST", "/api/v2/dags/astrid_realtime_inference/dagRuns", json={"logical_date": None, "conf": conf}
    )
    assert r.status_code == 400, r.text
