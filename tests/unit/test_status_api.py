"""The AstrID status API: payload assembly (astrid.status) over a real SQLite catalog, and the
FastAPI app (astrid.airflow.api) with Airflow's real auth dependency and metadata DB.

Only ``test_status_payload_shape`` overrides the auth dependency (to check the payload's shape
with hand-made DAG facts); every other app test goes through Airflow's ``get_user`` with no
token, a forged token, or a real JWT minted by the simple auth manager.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from astrid import status as core
from astrid.catalog import Catalog, NewObservation
from astrid.config import InferenceSchedulingConfig
from astrid.dag_kinds import DAG_IDS

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
RT, BATCH, VAL = "astrid_realtime_inference", "astrid_batch_inference", "astrid_model_validation"


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(f"sqlite:///{tmp_path}/c.db")
    cat.migrate()
    return cat


def _register(cat: Catalog, n: int, prefix: str = "o") -> list[int]:
    return cat.register(
        [
            NewObservation(
                name=f"{prefix}{i}",
                science_uri=f"s{prefix}{i}.fits",
                reference_uri=f"r{prefix}{i}.fits",
                mjd=60000 + i,
            )
            for i in range(n)
        ]
    )


@pytest.fixture
def seeded(catalog: Catalog) -> Catalog:
    """5 observations (1 inferred, 1 stuck claim, 3 preprocessed) and 4 recorded runs."""
    _register(catalog, 5)
    done = catalog.claim(1, f"{RT}:r1", timedelta(minutes=30), now=NOW - timedelta(hours=2))
    catalog.complete(done[0], f"{RT}:r1", "v1", [])
    catalog.claim(1, f"{RT}:dead", timedelta(minutes=10), now=NOW - timedelta(hours=1))  # lease expired
    catalog.record_run(
        dag_id=RT,
        run_id="scheduled__old",
        kind="realtime",
        status="success",
        started_at=NOW - timedelta(hours=3),
        processed=4,
        detections=7,
        model_version="1",
    )
    catalog.record_run(
        dag_id=RT,
        run_id="scheduled__new",
        kind="realtime",
        status="success",
        started_at=NOW - timedelta(minutes=30),
        processed=3,
        detections=2,
        model_version="1",
        processing_seconds=4.5,
        success_rate=1.0,
    )
    catalog.record_run(dag_id=RT, run_id="manual__failed", kind="realtime", status="failed")  # no start
    catalog.record_run(
        dag_id=BATCH,
        run_id="scheduled__b",
        kind="batch",
        status="success",
        started_at=NOW - timedelta(days=3),
        processed=40,
        detections=11,
    )
    return catalog


def _run(run_id: str, state: str, hours_ago: float, duration_min: float = 2) -> core.RunFact:
    start = NOW - timedelta(hours=hours_ago)
    end = start + timedelta(minutes=duration_min) if state in ("success", "failed") else None
    return core.RunFact(
        run_id=run_id, state=state, run_type="scheduled", run_after=start, start_date=start, end_date=end
    )


def _facts() -> list[core.DagFacts]:
    rt_runs = (
        _run("r5", "running", 0.1),
        _run("r4", "success", 1),
        _run("r3", "failed", 5),
        _run("r2", "success", 11.5),
        _run("r1", "success", 23),
    )
    return [
        core.DagFacts(
            dag_id=RT,
            paused=False,
            next_dagrun=NOW + timedelta(minutes=15),
            last_run=rt_runs[0],
            recent_runs=rt_runs,
        ),
        core.DagFacts(dag_id=BATCH, paused=True, last_run=_run("b1", "success", 60), recent_runs=()),
        # astrid_model_validation deliberately absent: not parsed yet
    ]


# ------------------------------------------------------------------------------- core: status


def test_build_status_per_dag_facts(seeded: Catalog) -> None:
    payload = core.build_status(_facts(), seeded, now=NOW, grafana_url="https://grafana.example/d/x")
    json.dumps(payload)  # JSON-safe as is
    dags = {d["dag_id"]: d for d in payload["dags"]}
    assert list(dags)[:3] == [RT, BATCH, VAL]
    # the model's life DAGs are listed too (here not parsed yet): training, drift check, serving
    assert list(dags)[3:] == ["astrid_model_training", "astrid_drift_check", "astrid_serving_model"]
    assert all(not dags[d]["exists"] and dags[d]["kind"] for d in list(dags)[3:])

    rt = dags[RT]
    assert rt["kind"] == "realtime" and rt["exists"] and rt["paused"] is False
    assert rt["last_run"]["run_id"] == "r5" and rt["last_run"]["state"] == "running"
    assert rt["last_run"]["end_date"] is None
    assert rt["next_run"] == "2026-03-10T12:15:00Z"
    assert rt["runs_today"] == 4  # r1 ran yesterday (13:00 UTC on the 9th)
    assert rt["runs_24h"] == 5
    assert rt["states_24h"] == {"running": 1, "success": 3, "failed": 1}
    assert rt["success_rate_24h"] == 0.75  # 3 of 4 finished; the running one does not count
    # newest *successful* catalog run; the failed one without a start time is skipped
    assert rt["last_detection_count"] == 2
    assert rt["last_inference"]["run_id"] == "scheduled__new"
    assert rt["last_inference"]["started_at"] == "2026-03-10T11:30:00Z"

    batch = dags[BATCH]
    assert batch["paused"] is True and batch["runs_today"] == 0 and batch["success_rate_24h"] is None
    assert batch["last_run"]["end_date"] == "2026-03-08T00:02:00Z"
    assert batch["last_detection_count"] == 11

    val = dags[VAL]
    assert val["exists"] is False and val["last_run"] is None and val["last_detection_count"] is None

    assert payload["catalog"]["status_counts"]["inferred"] == 1
    assert payload["catalog"]["status_counts"]["preprocessed"] == 3
    assert payload["catalog"]["observations"] == 5
    assert payload["catalog"]["stuck_claims"] == 1
    assert payload["catalog"]["oldest_stuck_lease"] == "2026-03-10T11:10:00Z"
    assert payload["links"]["grafana"] == "https://grafana.example/d/x"
    problems = "\n".join(payload["problems"])
    assert f"{BATCH} is paused" in problems
    assert f"{VAL} is not in Airflow" in problems
    assert "success rate over 24 h is 75%" in problems
    assert "1 observation(s) claimed with an expired lease" in problems


def test_runs_today_follow_the_schedule_timezone(seeded: Catalog) -> None:
    # 12:00 UTC is 08:00 in New York (EDT): "today" there began at 04:00 UTC, after r2 (00:30 UTC)
    payload = core.build_status(_facts(), seeded, now=NOW, tz="America/New_York")
    assert core.day_start(NOW, "America/New_York") == datetime(2026, 3, 10, 4, 0, tzinfo=UTC)
    assert payload["dags"][0]["runs_today"] == 3
    assert payload["dags"][0]["runs_24h"] == 5
    assert payload["timezone"] == "America/New_York"


def test_facts_window_reaches_back_to_midnight_or_24h() -> None:
    assert core.facts_window_start(NOW) == NOW - timedelta(hours=24)
    # 23:30 on the 25-hour day DST ends (New York, 1 Nov 2026): midnight was 24.5 h ago
    late = datetime(2026, 11, 2, 4, 30, tzinfo=UTC)
    assert core.facts_window_start(late, "America/New_York") == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)


def test_empty_catalog_and_no_facts() -> None:
    class Empty:
        def runs(self, since=None, dag_id=None):
            return []

        def status_counts(self):
            return {"preprocessed": 0}

        def stuck_claims(self, now=None):
            return []

    payload = core.build_status([], Empty(), now=NOW)
    assert [d["exists"] for d in payload["dags"]] == [False] * len(DAG_IDS)
    assert payload["catalog"]["stuck_claims"] == 0 and payload["catalog"]["oldest_stuck_lease"] is None
    assert payload["links"]["grafana"] == core.DEFAULT_GRAFANA_URL


# ------------------------------------------------------------------------------- core: runs


def test_build_runs_window_totals_and_json(seeded: Catalog) -> None:
    payload = core.build_runs(seeded, 24, now=NOW)
    json.dumps(payload)
    assert [r["run_id"] for r in payload["runs"]] == ["scheduled__new", "scheduled__old"]  # newest first
    assert payload["count"] == 2 and payload["hours"] == 24 and payload["since"] == "2026-03-09T12:00:00Z"
    assert payload["totals"] == {"claimed": 0, "processed": 7, "failed": 0, "rejected": 0, "detections": 9}
    first = payload["runs"][0]
    assert first["started_at"] == "2026-03-10T11:30:00Z" and first["processing_seconds"] == 4.5
    assert "id" not in first and first["recorded_at"]
    assert core.build_runs(seeded, 720, now=NOW)["count"] == 3  # + the 3-day-old batch run
    assert core.build_runs(seeded, 720, now=NOW, dag_id=BATCH)["count"] == 1


@pytest.mark.parametrize("hours", [0, -1, 721, 1.5, "24", True, None])
def test_hours_out_of_range_are_refused(hours) -> None:
    with pytest.raises(ValueError, match="hours"):
        core.check_hours(hours)


# ------------------------------------------------------------------------------- core: trigger


def test_trigger_conf_maps_run_types_to_dags_and_params() -> None:
    assert core.trigger_conf("realtime") == (RT, {})
    assert core.trigger_conf("batch", max_observations=50, model_version="3", confidence_threshold=0.7) == (
        BATCH,
        {"max_observations": 50, "model_version": "3", "confidence_threshold": 0.7},
    )
    assert core.trigger_conf("validation", max_observations=20, confidence_threshold=0.4) == (
        VAL,
        {"dataset_size": 20, "confidence_threshold": 0.4},
    )
    with pytest.raises(ValueError, match="model_version does not apply"):
        core.trigger_conf("validation", model_version="champion")
    with pytest.raises(ValueError, match="run_type"):
        core.trigger_conf("nope")


def test_max_observations_limit_is_the_configured_maximum() -> None:
    config = InferenceSchedulingConfig.from_env(
        {"ASTRID_INFERENCE_MAX_OBSERVATIONS": "7", "ASTRID_INFERENCE_BATCH_MAX_OBSERVATIONS": "70"}
    )
    assert core.max_observations_limit("realtime", config) == 7
    assert core.max_observations_limit("batch", config) == 70
    assert core.max_observations_limit("validation", config) is None


def test_grafana_url_must_be_http() -> None:
    assert core.safe_http_url("https://g.example/d/a") == "https://g.example/d/a"
    assert core.safe_http_url("javascript:alert(1)") == core.DEFAULT_GRAFANA_URL
    assert core.safe_http_url("") == core.DEFAULT_GRAFANA_URL


def test_status_module_has_no_airflow_imports() -> None:
    code = "import sys, astrid.status; print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "plugins")},
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------- the plugin


def test_plugin_import_is_light_and_declares_app_view_and_links() -> None:
    code = (
        "import sys, json; from astrid.airflow.plugin import AstridPlugin as P\n"
        "print(json.dumps({'heavy': [m for m in ('fastapi', 'astrid.airflow.api', 'torch', 'mlflow')"
        " if m in sys.modules], 'apps': [(a['url_prefix'], a['name']) for a in P.fastapi_apps],"
        " 'views': P.external_views, 'links': [l.name for l in P.operator_extra_links], 'name': P.name}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO / "plugins"),
            "ASTRID_GRAFANA_URL": "https://grafana.example/d/astrid",
        },
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["heavy"] == [], f"plugin import pulled in {info['heavy']}"
    assert info["name"] == "astrid"
    assert info["apps"] == [["/astrid", "AstrID status API"]]
    page = info["views"][0]
    assert page["name"] == "AstrID" and page["href"] == "astrid/ui" and page["url_route"] == "astrid"
    assert page["nav_top_level"] is True
    assert info["views"][1]["href"] == "https://grafana.example/d/astrid"
    assert info["links"] == ["Detections", "Detection catalog", "MLflow run"]


def test_plugin_discovery_loads_the_plugin_once_without_errors(tmp_path: Path) -> None:
    code = (
        "import json; from airflow import plugins_manager as pm\n"
        "plugins, errors = pm._get_plugins()\n"
        "print(json.dumps({'names': [p.name for p in plugins], 'errors': errors}))"
    )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "PYTHONPATH": str(REPO / "plugins"),
    }
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True, env=env
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info == {"names": ["astrid"], "errors": {}}


def test_lazy_app_builds_on_first_request_under_its_mount(catalog: Catalog) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from astrid.airflow import api
    from astrid.airflow.plugin import LazyASGIApp

    lazy = LazyASGIApp("astrid.airflow.api:create_app")
    root = FastAPI()
    root.mount("/astrid", lazy)
    assert lazy._app is None
    lazy.app.dependency_overrides[api.catalog_opener] = lambda: lambda: catalog
    with TestClient(root) as client:
        assert client.get("/astrid/health").json()["status"] == "ok"
        schema = client.get("/astrid/openapi.json").json()
    assert {"/health", "/status", "/runs", "/trigger"} <= set(schema["paths"])


# ------------------------------------------------------------------------------- the FastAPI app


@pytest.fixture(scope="module")
def auth(airflow_db):
    """Airflow's simple auth manager, initialised as the api-server does, and a real admin JWT."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = init_auth_manager()
    return manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


@pytest.fixture
def app(catalog: Catalog):
    from astrid.airflow import api

    application = api.create_app()
    application.dependency_overrides[api.catalog_opener] = lambda: lambda: catalog
    return application


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_is_public_and_says_only_ok(client, catalog: Catalog) -> None:
    """Unauthenticated: status and latency, no schema revision (or anything else) to fingerprint."""
    r = client.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"status", "latency_ms"} and body["status"] == "ok"
    assert catalog.head_revision() not in r.text
    assert r.headers["cache-control"] == "no-store"


def test_health_503_names_the_failure_without_leaking_it(app) -> None:
    from fastapi.testclient import TestClient

    from astrid.airflow import api

    def broken():
        raise RuntimeError("could not connect to postgresql://astrid:s3cret@db.internal/astrid")

    app.dependency_overrides[api.catalog_opener] = lambda: broken
    with TestClient(app) as c:
        r = c.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "reason": "catalog unreachable"}
    assert "s3cret" not in r.text


@pytest.mark.parametrize(("method", "path"), [("GET", "/status"), ("GET", "/runs"), ("POST", "/trigger")])
def test_everything_but_health_needs_airflow_auth(client, auth: str, method: str, path: str) -> None:
    body = {"run_type": "realtime"} if method == "POST" else None
    assert client.request(method, path, json=body).status_code == 401
    forged = client.request(method, path, json=body, headers=_bearer("not.a.jwt"))
    assert forged.status_code in (401, 403)
    # an invalid body without credentials is still refused for lack of them, not described
    if method == "POST":
        assert client.post(path, json={"run_type": "nope"}).status_code == 401


def test_status_and_runs_with_a_real_token(client, auth: str, seeded: Catalog) -> None:
    r = client.get("/status", headers=_bearer(auth))
    assert r.status_code == 200, r.text
    assert [d["dag_id"] for d in r.json()["dags"]] == list(DAG_IDS)
    assert r.json()["catalog"]["observations"] == 5
    r = client.get("/runs", params={"hours": 720}, headers=_bearer(auth))
    assert r.status_code == 200, r.text
    assert r.json()["hours"] == 720
    assert (
        client.get("/runs", params={"hours": 720, "run_type": "batch"}, headers=_bearer(auth)).json()["runs"]
        == []
    )


@pytest.mark.parametrize("hours", ["0", "721", "-5", "abc", "1.5"])
def test_runs_hours_validated(client, auth: str, hours: str) -> None:
    assert client.get("/runs", params={"hours": hours}, headers=_bearer(auth)).status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"run_type": "nope"}, "run_type"),
        ({"run_type": "realtime", "max_observations": -1}, "max_observations"),
        ({"run_type": "realtime", "max_observations": 0}, "max_observations"),
        ({"run_type": "realtime", "max_observations": "5"}, "max_observations"),
        ({"run_type": "realtime", "max_observations": 2.5}, "max_observations"),
        ({"run_type": "realtime", "max_observations": 11}, "at most 10"),  # config default maximum
        ({"run_type": "batch", "max_observations": 101}, "at most 100"),
        ({"run_type": "realtime", "confidence_threshold": 1.5}, "confidence_threshold"),
        ({"run_type": "realtime", "confidence_threshold": -0.1}, "confidence_threshold"),
        ({"run_type": "realtime", "confidence_threshold": 0}, "confidence_threshold"),
        ({"run_type": "realtime", "confidence_threshold": -0.0}, "confidence_threshold"),
        ({"run_type": "realtime", "confidence_threshold": 1}, "confidence_threshold"),
        ({"run_type": "realtime", "max_observations": 10**30}, "max_observations"),
        ({"run_type": "realtime", "model_version": "/etc"}, "not a model directory under the model roots"),
        ({"run_type": "realtime", "model_version": "/../../etc/passwd"}, "model_version"),
        ({"run_type": "realtime", "model_version": "../../etc"}, "model_version"),
        ({"run_type": "realtime", "model_version": "champion\u0000"}, "model_version"),
        ({"run_type": "realtime", "model_version": "\u202echampion"}, "model_version"),
        ({"run_type": "realtime", "model_version": 7}, "model_version"),
        ({"run_type": "realtime", "model_version": ""}, "model_version"),
        ({"run_type": "realtime", "model_version": "x" * 5000}, "model_version"),
        ({"run_type": "realtime\u0000"}, "run_type"),
        ({"run_type": "realtime", "confidence_threshold": "0.5"}, "confidence_threshold"),
        ({"run_type": "realtime", "confidence_threshold": True}, "confidence_threshold"),
        ({"run_type": "realtime", "max_observations": True}, "max_observations"),
        ({"run_type": "realtime", "model_version": "latest; rm -rf"}, "model_version"),
        ({"run_type": "validation", "model_version": "champion"}, "model_version does not apply"),
        ({"run_type": "realtime", "extra": 1}, "extra"),
        ({}, "run_type"),
    ],
)
def test_trigger_body_validated(client, auth: str, body: dict, field: str) -> None:
    r = client.post("/trigger", json=body, headers=_bearer(auth))
    assert r.status_code == 422, r.text
    assert field in r.text


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["confidence_threshold", "max_observations"])
def test_non_finite_numbers_are_a_422_naming_the_field(client, auth: str, number: str, field: str) -> None:
    """Python's json reads NaN/Infinity (and 1e999 as inf); the 422 must still encode (it was a 500)."""
    body = f'{{"run_type": "realtime", "{field}": {number}}}'
    r = client.post("/trigger", content=body, headers={**_bearer(auth), "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [e["loc"] for e in detail] == [["body", field]]
    assert json.loads(r.text)  # valid JSON: the echoed input is a string, not a bare NaN


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (r'{"run_type": "realtime", "model_version": "/x\ud800"}', "model_version"),
        (r'{"run_type": "\ud800"}', "run_type"),
    ],
)
def test_a_lone_surrogate_is_a_422_not_an_encoding_error(client, auth: str, body: str, field: str) -> None:
    """JSON allows a lone surrogate escape; UTF-8 cannot encode it, so echoing it back used to fail."""
    r = client.post("/trigger", content=body, headers={**_bearer(auth), "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field]


def test_a_huge_body_is_refused_before_it_is_read(client, auth: str) -> None:
    body = json.dumps({"run_type": "realtime", "model_version": "x" * (1 << 20)})
    r = client.post("/trigger", content=body, headers={**_bearer(auth), "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while it streams in
        yield b'{"run_type": "realtime", "model_version": "'
        for _ in range(100):
            yield b"x" * 4096
        yield b'"}'

    r = client.post(
        "/trigger", content=chunks(), headers={**_bearer(auth), "Content-Type": "application/json"}
    )
    assert r.status_code == 413


def test_deeply_nested_json_is_a_client_error(client, auth: str) -> None:
    body = '{"run_type": ' + "[" * 20000 + "]" * 20000 + "}"
    r = client.post("/trigger", content=body, headers={**_bearer(auth), "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_a_model_path_under_the_model_roots_passes_the_api(client, auth: str, tmp_path, monkeypatch) -> None:
    """The API accepts what the roots allow (the DAG then refuses or runs it); /etc it refuses."""
    monkeypatch.setenv("ASTRID_INFERENCE_MODEL_ROOTS", str(tmp_path))
    import dataclasses

    from astrid.dag_kinds import KINDS

    monkeypatch.setitem(
        KINDS, "realtime", dataclasses.replace(KINDS["realtime"], dag_id="astrid_realtime_never_parsed")
    )
    ok = client.post(
        "/trigger", json={"run_type": "realtime", "model_version": f"{tmp_path}/m1"}, headers=_bearer(auth)
    )
    assert ok.status_code == 404, ok.text  # past validation: the (renamed) DAG does not exist
    refused = client.post(
        "/trigger", json={"run_type": "realtime", "model_version": "/etc"}, headers=_bearer(auth)
    )
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "model_version"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/trigger", {"run_type": "realtime"}), ("GET", "/status", None)],
)
def test_a_bad_astrid_environment_is_a_500_naming_the_variable(
    client, auth: str, monkeypatch, method: str, path: str, body
) -> None:
    monkeypatch.setenv("ASTRID_INFERENCE_LEASE_MINUTES", "1e12")
    r = client.request(method, path, json=body, headers=_bearer(auth))
    assert r.status_code == 500
    assert "ASTRID_INFERENCE_LEASE_MINUTES" in r.json()["detail"] and "1e12" in r.json()["detail"]
    # and nothing about it for a caller without credentials
    anonymous = client.request(method, path, json=body)
    assert anonymous.status_code == 401 and "ASTRID" not in anonymous.text


def test_docs_are_served_without_a_cdn(catalog: Catalog) -> None:
    """/astrid/docs and /astrid/redoc load their scripts and styles from the api-server itself
    (vendored by fastapi-offline), under the plugin's mount point."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from astrid.airflow.plugin import LazyASGIApp

    root = FastAPI()
    root.mount("/astrid", LazyASGIApp("astrid.airflow.api:create_app"))
    with TestClient(root) as client:
        for page in ("/astrid/docs", "/astrid/redoc"):
            html = client.get(page)
            assert html.status_code == 200, page
            assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
            assert assets and all(a.startswith("/astrid/static-docs/") for a in assets), assets
            assert "cdn" not in html.text.lower()
            for asset in assets:
                got = client.get(asset)
                assert got.status_code == 200 and got.content, asset


def test_trigger_maxima_follow_the_environment(client, auth: str, monkeypatch) -> None:
    monkeypatch.setenv("ASTRID_INFERENCE_MAX_OBSERVATIONS", "3")
    r = client.post("/trigger", json={"run_type": "realtime", "max_observations": 4}, headers=_bearer(auth))
    assert r.status_code == 422 and "at most 3" in r.text


def test_trigger_unknown_dag_is_404(client, auth: str, monkeypatch) -> None:
    # a DAG id that is in no metadata DB (earlier tests in a full run parse the real ones into it)
    import dataclasses

    from astrid.dag_kinds import KINDS

    monkeypatch.setitem(
        KINDS, "batch", dataclasses.replace(KINDS["batch"], dag_id="astrid_batch_never_parsed")
    )
    r = client.post("/trigger", json={"run_type": "batch", "max_observations": 5}, headers=_bearer(auth))
    assert r.status_code == 404, r.text


def test_status_payload_shape(app, catalog: Catalog) -> None:
    """Auth dependency overridden HERE ONLY (and said so): the payload shape with hand-made facts."""
    from fastapi.testclient import TestClient

    from astrid.airflow import api

    app.dependency_overrides[api.require_read] = lambda: object()
    app.dependency_overrides[api.get_dag_facts] = _facts
    with TestClient(app) as c:
        body = c.get("/status").json()
    assert set(body) == {"schema_version", "generated_at", "timezone", "dags", "catalog", "problems", "links"}
    assert set(body["dags"][0]) == {
        "dag_id",
        "kind",
        "exists",
        "paused",
        "stale",
        "has_import_errors",
        "next_run",
        "next_run_create_after",
        "last_run",
        "runs_today",
        "runs_24h",
        "states_24h",
        "success_rate_24h",
        "last_detection_count",
        "last_inference",
    }
    assert set(body["dags"][0]["last_run"]) == {
        "run_id",
        "state",
        "run_type",
        "run_after",
        "start_date",
        "end_date",
    }
    assert set(body["catalog"]) == {"status_counts", "observations", "stuck_claims", "oldest_stuck_lease"}


def test_dag_facts_from_the_metadata_db(airflow_db) -> None:
    """query_dag_facts over Airflow's ORM models (own DAG ids, so no other test is disturbed)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    from astrid.airflow.api import query_dag_facts

    now = datetime.now(UTC)
    ids = ["astrid_status_test_a", "astrid_status_test_b", "astrid_status_test_missing"]
    with create_session() as session:
        session.merge(DagBundleModel(name="astrid-status-test"))
        session.flush()
        session.add(
            DagModel(
                dag_id=ids[0],
                bundle_name="astrid-status-test",
                is_paused=False,
                is_stale=False,
                next_dagrun=now + timedelta(minutes=15),
            )
        )
        session.add(DagModel(dag_id=ids[1], bundle_name="astrid-status-test", is_paused=True, is_stale=False))
        session.flush()
        for i, (state, hours) in enumerate([("success", 30), ("failed", 2), ("success", 1)]):
            run = DagRun(
                dag_id=ids[0],
                run_id=f"manual__t{i}",
                run_type=DagRunType.MANUAL,
                state=DagRunState(state),
                run_after=now - timedelta(hours=hours),
                start_date=now - timedelta(hours=hours),
            )
            run.end_date = now - timedelta(hours=hours) + timedelta(minutes=1)
            session.add(run)
    try:
        with create_session() as session:
            facts = {f.dag_id: f for f in query_dag_facts(session, ids, now - timedelta(hours=24))}
        a, b, missing = facts[ids[0]], facts[ids[1]], facts[ids[2]]
        assert a.exists and a.paused is False and a.next_dagrun is not None
        assert a.last_run.run_id == "manual__t2" and a.last_run.state == "success" and a.last_run.end_date
        assert [r.run_id for r in a.recent_runs] == ["manual__t2", "manual__t1"]  # t0 is 30 h old
        assert b.exists and b.paused is True and b.last_run is None
        assert missing.exists is False
    finally:
        with create_session() as session:
            session.query(DagRun).filter(DagRun.dag_id.in_(ids)).delete(synchronize_session=False)
            session.query(DagModel).filter(DagModel.dag_id.in_(ids)).delete(synchronize_session=False)


def test_page_and_openapi(client, monkeypatch) -> None:
    monkeypatch.setenv("ASTRID_GRAFANA_URL", 'https://grafana.example/d/a?x=1&y="2"')
    r = client.get("/ui")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'href="https://grafana.example/d/a?x=1&amp;y=&quot;2&quot;"' in r.text
    assert "frame-ancestors 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    monkeypatch.setenv("ASTRID_GRAFANA_URL", "javascript:alert(1)")
    assert "javascript:" not in client.get("/ui").text
    schema = client.get("/openapi.json").json()
    assert {"/health", "/status", "/runs", "/trigger", "/ui"} <= set(schema["paths"])
    trigger = schema["components"]["schemas"]["TriggerRequest"]["properties"]
    assert trigger["confidence_threshold"]["anyOf"][0]["exclusiveMaximum"] == 1
    assert any("Bearer" in name or "OAuth2" in name for name in schema["components"]["securitySchemes"])
