"""The AstrID plugin in a real `airflow standalone`: the status API's auth and validation over HTTP,
and the AstrID page in the Airflow UI driven by headless Chromium (Playwright).

Screenshots go to ``$ASTRID_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from astrid.dag_kinds import DAG_IDS

pytestmark = [pytest.mark.standalone, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASTRID_DAGS = DAG_IDS  # what /astrid/status lists, in order: one per DAG kind
MODEL_CARD = REPO / "include" / "models" / "astrid-unet" / "model_card.json"


def artifacts() -> Path:
    path = Path(os.environ.get("ASTRID_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------- HTTP


def test_health_is_public(standalone) -> None:
    r = requests.get(f"{standalone.url}/astrid/health", timeout=30)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"status", "latency_ms"} and r.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/astrid/status", None),
        ("GET", "/astrid/runs?hours=24", None),
        ("POST", "/astrid/trigger", {"run_type": "validation", "max_observations": 2}),
    ],
)
def test_endpoints_need_airflow_auth(standalone, method: str, path: str, body) -> None:
    anonymous = requests.request(method, f"{standalone.url}{path}", json=body, timeout=30)
    assert anonymous.status_code in (401, 403), anonymous.text
    forged = requests.request(
        method, f"{standalone.url}{path}", json=body, headers={"Authorization": "Bearer forged"}, timeout=30
    )
    assert forged.status_code in (401, 403), forged.text

    r = standalone.api(method, path, json=body)
    assert r.status_code == 200, r.text
    if path.startswith("/astrid/status"):
        assert [d["dag_id"] for d in r.json()["dags"]] == list(ASTRID_DAGS)
        assert all(d["exists"] for d in r.json()["dags"])
        assert "status_counts" in r.json()["catalog"]
    elif path.startswith("/astrid/runs"):
        assert r.json()["hours"] == 24
    else:
        created = r.json()
        assert created["dag_id"] == "astrid_model_validation" and created["run_id"].startswith("manual__")
        assert created["conf"] == {"dataset_size": 2}
        run = standalone.api("GET", f"/api/v2/dags/astrid_model_validation/dagRuns/{created['run_id']}")
        assert run.ok and run.json()["conf"] == {"dataset_size": 2}
        assert run.json()["triggered_by"] == "rest_api"
        # the run was only there to prove creation: remove it so it never runs
        deleted = standalone.api(
            "DELETE", f"/api/v2/dags/astrid_model_validation/dagRuns/{created['run_id']}"
        )
        assert deleted.status_code == 204, deleted.text


@pytest.mark.parametrize(
    "body",
    [
        {"run_type": "realtime", "max_observations": -1},
        {"run_type": "realtime", "confidence_threshold": 1.5},
        {"run_type": "nope"},
        {"run_type": "realtime", "max_observations": 11},
        {"run_type": "realtime", "model_version": "not a model"},
    ],
)
def test_invalid_trigger_is_422(standalone, body) -> None:
    r = standalone.api("POST", "/astrid/trigger", json=body)
    assert r.status_code == 422, r.text


def test_runs_hours_out_of_range_is_422(standalone) -> None:
    for hours in (0, 721):
        assert standalone.api("GET", f"/astrid/runs?hours={hours}").status_code == 422


def test_openapi_lists_the_paths(standalone) -> None:
    r = requests.get(f"{standalone.url}/astrid/openapi.json", timeout=30)
    assert r.status_code == 200
    assert {"/health", "/status", "/runs", "/trigger"} <= set(r.json()["paths"])
    # the plugin is registered as such in Airflow
    plugins = standalone.api("GET", "/api/v2/plugins").json()["plugins"]
    astrid = next(p for p in plugins if p["name"] == "astrid")
    assert astrid["fastapi_apps"][0]["url_prefix"] == "/astrid"
    assert {v["name"] for v in astrid["external_views"]} >= {"AstrID", "AstrID Grafana"}
    assert standalone.api("GET", "/api/v2/importErrors").json()["total_entries"] == 0


# ------------------------------------------------------------------------------- browser


def _wait_for_model(timeout: float = 1800) -> None:
    """The shipped model may still be in training (another job writes it): wait for its card."""
    deadline = time.monotonic() + timeout
    while not MODEL_CARD.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{MODEL_CARD} did not appear within {timeout}s")
        time.sleep(10)


@pytest.mark.browser
def test_astrid_page_in_the_airflow_ui(standalone) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    _wait_for_model()
    from astrid.survey import seed_survey

    # New DAGs start paused: unpause the realtime DAG (through the API) so the triggered run starts.
    # Unpausing makes the scheduler start the latest scheduled interval at once: let that run finish
    # before seeding, so the observations are left for the run the page triggers.
    standalone.api(
        "PATCH", "/api/v2/dags/astrid_realtime_inference", json={"is_paused": False}
    ).raise_for_status()
    _wait_until_realtime_idle(standalone)
    seeded = seed_survey(
        3,
        size=256,
        seed=9300,
        catalog_url=standalone.env["ASTRID_CATALOG_URL"],
        storage_root=standalone.env["ASTRID_STORAGE_ROOT"],
        prefix="ui",
    )

    out = artifacts()
    timings: dict[str, float] = {}
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        try:
            started = time.monotonic()
            # 1. Airflow 3's simple auth manager login page
            page.goto(standalone.url, wait_until="networkidle")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(standalone.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/" not in url, timeout=60_000)
            timings["login_s"] = time.monotonic() - started

            # 2. the three AstrID DAGs in the DAG list
            page.goto(f"{standalone.url}/dags", wait_until="networkidle")
            for dag_id in ASTRID_DAGS:
                playwright_api.expect(page.get_by_text(dag_id, exact=True).first).to_be_visible(
                    timeout=60_000
                )
            page.screenshot(path=str(out / "01-dag-list.png"), full_page=True)

            # 3. the AstrID page from the nav (a top-level nav item), embedded at /plugin/astrid
            started = time.monotonic()
            page.get_by_role("link", name="AstrID", exact=True).first.click()
            page.wait_for_url("**/plugin/astrid", timeout=90_000)
            frame = page.frame_locator("iframe").first
            realtime_row = frame.locator('#status-dags tr[data-dag-id="astrid_realtime_inference"]')
            playwright_api.expect(realtime_row).to_be_visible(timeout=60_000)
            for dag_id in ASTRID_DAGS:
                playwright_api.expect(
                    frame.locator(f'#status-dags tr[data-dag-id="{dag_id}"]')
                ).to_be_visible()
            playwright_api.expect(frame.locator("#auth-error")).to_be_hidden()
            playwright_api.expect(frame.locator('#catalog tr[data-status="preprocessed"]')).to_be_visible()
            grafana = frame.locator("#grafana-link")
            assert grafana.get_attribute("href") == "http://localhost:3000/d/astrid-inference"
            timings["page_s"] = time.monotonic() - started
            page.screenshot(path=str(out / "02-astrid-page.png"), full_page=True)

            # 4. trigger a realtime run from the page and watch it succeed there
            started = time.monotonic()
            frame.locator("#run_type").select_option("realtime")
            frame.locator("#max_observations").fill("3")
            frame.locator("#trigger-button").click()
            run_id_node = frame.locator("#trigger-run-id")
            playwright_api.expect(run_id_node).to_be_visible(timeout=60_000)
            run_id = run_id_node.inner_text().strip()
            assert run_id.startswith("manual__")
            page.screenshot(path=str(out / "03-triggered.png"), full_page=True)
            state = frame.locator("#trigger-state")
            playwright_api.expect(state).to_have_attribute("data-state", "success", timeout=420_000)
            timings["run_s"] = time.monotonic() - started

            # the status table catches up: last run = ours, succeeded, with a detection count
            frame.locator("#refresh").click()
            playwright_api.expect(realtime_row.locator(".last-run")).to_have_text(run_id, timeout=60_000)
            playwright_api.expect(realtime_row.locator(".last-state .state")).to_have_text("success")
            playwright_api.expect(realtime_row.locator(".detections")).not_to_have_text("—")
            page.screenshot(path=str(out / "04-run-succeeded.png"), full_page=True)

            # 5. the infer task's "Detections" extra link (relative to Airflow's base URL) opens the
            # run's gallery, with every stamp decoded
            links = standalone.api(
                "GET", f"/api/v2/dags/astrid_realtime_inference/dagRuns/{run_id}/taskInstances/infer/links"
            ).json()["extra_links"]
            assert not links["Detections"].startswith("/"), links
            page.goto(urljoin(f"{standalone.url}/", links["Detections"]))
            page.wait_for_selector("body[data-loaded='true'][data-view='run']", timeout=60_000)
            stamps = page.locator("#run-gallery img.stamp")
            playwright_api.expect(stamps.first).to_be_visible(timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#run-gallery img.stamp')].every(i => i.complete)"
            )
            widths = page.eval_on_selector_all(
                "#run-gallery img.stamp", "imgs => imgs.map(i => i.naturalWidth)"
            )
            assert widths and all(w == 4 * 63 for w in widths), widths
            page.screenshot(path=str(out / "05-run-gallery.png"), full_page=False)
        except Exception:
            page.screenshot(path=str(out / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    run = standalone.api("GET", f"/api/v2/dags/astrid_realtime_inference/dagRuns/{run_id}").json()
    assert run["state"] == "success" and run["conf"] == {"max_observations": 3}
    assert run["triggered_by"] == "ui"  # the page's request carries a Referer
    realtime = standalone.api("GET", "/astrid/status").json()["dags"][0]
    assert realtime["last_inference"]["run_id"] == run_id
    from astrid.catalog import Catalog

    catalog = Catalog(standalone.env["ASTRID_CATALOG_URL"])
    ours = {o["id"]: o for o in catalog.observations() if o["id"] in seeded.observation_ids}
    assert {o["status"] for o in ours.values()} == {"inferred"}, ours
    assert realtime["last_inference"]["processed"] >= 1, realtime  # ours claimed them (nothing else ran)
    # the infer task's extra links, registered by the plugin, resolve for the UI
    links = standalone.api(
        "GET", f"/api/v2/dags/astrid_realtime_inference/dagRuns/{run_id}/taskInstances/infer/links"
    )
    assert links.status_code == 200, links.text
    assert {"Detections", "MLflow run", "Detection catalog"} <= set(links.json()["extra_links"]), links.json()
    catalog_csv = standalone.api("GET", "/" + links.json()["extra_links"]["Detection catalog"])
    assert catalog_csv.status_code == 200 and catalog_csv.text.startswith("id,observation_id,"), (
        catalog_csv.text
    )
    print(f"timings: { {k: round(v, 1) for k, v in timings.items()} }; run: {realtime['last_inference']}")


def _wait_until_realtime_idle(standalone, settle: float = 15, timeout: float = 300) -> None:
    """Wait for the scheduled run that unpausing may create (give the scheduler ``settle`` s to
    create it) to finish."""
    path = "/api/v2/dags/astrid_realtime_inference/dagRuns"
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        runs = standalone.api("GET", path, params={"state": ["queued", "running"]}).json()["dag_runs"]
        if not runs and time.monotonic() - started >= settle:
            return
        time.sleep(2)
    pytest.fail(f"astrid_realtime_inference still busy after {timeout}s: {standalone.log_tail()}")
