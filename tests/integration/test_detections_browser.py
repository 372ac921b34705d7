"""The AstrID page's drill-down in headless Chromium (Playwright): a run's gallery and an
observation's frame, with the stamps really decoded, under a base path.

Everything is real but the Airflow api-server around the app: the detections come from the real
pipeline (shipped U-Net on CPU, real photometry, real stamps in a storage root, SQLite catalog),
the status API is the real app served by uvicorn, and authentication is Airflow's own (a JWT from
the simple auth manager, sent as the UI's ``_token`` cookie). The app is mounted at
``/airflow/astrid`` as Airflow mounts it under ``[api] base_url = http://host/airflow``, so any
absolute ``/astrid/...`` URL in the page would break the test (test_plugin_browser.py drives the
page inside a real ``airflow standalone``).

Screenshots go to ``$ASTRID_TEST_ARTIFACTS`` (default ``tests/artifacts/``); the gallery's is the
one in the README (docs/img/gallery.png).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
BASE = "/airflow"
RUN_KEY = "astrid_realtime_inference:manual__2026-12-02T10:00:00+00:00"


def artifacts() -> Path:
    path = Path(os.environ.get("ASTRID_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    """Two synthetic observations through the real pipeline: detections, photometry, stamps."""
    import torch

    from astrid.catalog import Catalog
    from astrid.ml.engine import InferenceEngine
    from astrid.paths import shipped_model_path
    from astrid.pipeline import RunInfo, VersionedDetector, run_inference
    from astrid.storage import StorageRoot
    from astrid.survey import seed_survey

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("gallery")
    url = f"sqlite:///{root}/catalog.db"
    seed_survey(2, size=512, seed=1616, catalog_url=url, storage_root=str(root / "store"), prefix="gal")
    catalog = Catalog(url)
    storage = StorageRoot.from_uri(str(root / "store"))
    claims = catalog.claim(10, RUN_KEY, timedelta(minutes=10))
    summary = run_inference(
        claims,
        catalog=catalog,
        storage=storage,
        detector=VersionedDetector(InferenceEngine.from_path(shipped_model_path(), device="cpu"), "1"),
        run=RunInfo(run_id=RUN_KEY, dag_id="astrid_realtime_inference"),
        threshold=0.5,
        max_side=8192,
        artifacts=storage.path / "runs" / "gallery",
        max_stamps=200,
    )
    assert summary.processed_count == 2 and summary.detections_found >= 4, summary
    yield {"catalog": catalog, "storage": storage, "summary": summary}
    catalog.dispose()


@pytest.fixture(scope="module")
def server(found, airflow_db):
    """The status API app under /airflow/astrid, served by uvicorn on a free local port."""
    import uvicorn
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from astrid.airflow import api

    token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    app = api.create_app()
    app.dependency_overrides[api.catalog_opener] = lambda: lambda: found["catalog"]
    app.dependency_overrides[api.storage_opener] = lambda: lambda: found["storage"]
    port = _free_port()
    config = uvicorn.Config(
        Starlette(routes=[Mount(f"{BASE}/astrid", app=app)]), host="127.0.0.1", port=port, log_level="warning"
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "token": token}
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page(server):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        context = browser.new_context(viewport={"width": 1360, "height": 1000})
        context.add_cookies([{"name": COOKIE_NAME_JWT_TOKEN, "value": server["token"], "url": server["url"]}])
        tab = context.new_page()
        failed: list[str] = []
        tab.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        tab.failed = failed
        try:
            yield tab
        except Exception:
            tab.screenshot(path=str(artifacts() / "gallery-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def _decoded(page, selector: str) -> list[int]:
    """naturalWidth of every image matched, after each has finished loading (0 = not decoded)."""
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector, timeout=30_000
    )
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")


def test_run_gallery_renders_its_stamps(page, server, found):
    from urllib.parse import quote

    url = f"{server['url']}{BASE}/astrid/ui#run={quote(RUN_KEY, safe='')}"
    page.goto(url)
    page.wait_for_selector("body[data-loaded='true'][data-view='run']", timeout=60_000)
    rows = page.locator("#run-observations tbody tr")
    assert rows.count() == 2
    cards = page.locator("#run-gallery .card")
    n = found["summary"].detections_found
    assert cards.count() == n
    widths = _decoded(page, "#run-gallery img.stamp")
    assert len(widths) == n and all(w == 4 * 63 for w in widths), widths
    scores = [
        float(s)
        for s in page.eval_on_selector_all("#run-gallery .card", "cs => cs.map(c => c.dataset.score)")
    ]
    assert scores == sorted(scores, reverse=True)
    # sort ascending, then filter by score
    page.select_option('.gallery-controls[data-gallery="run-gallery"] .sort', "score-asc")
    ascending = [
        float(s)
        for s in page.eval_on_selector_all("#run-gallery .card", "cs => cs.map(c => c.dataset.score)")
    ]
    assert ascending == sorted(scores)
    slider = page.locator('.gallery-controls[data-gallery="run-gallery"] .min-score')
    slider.fill(f"{sorted(scores)[len(scores) // 2]:.2f}")
    cut = float(slider.input_value())  # the slider's 0.01 steps
    kept = page.locator("#run-gallery .card").count()
    assert kept == sum(s >= cut for s in scores) and kept < n
    page.select_option('.gallery-controls[data-gallery="run-gallery"] .sort', "score-desc")
    page.locator('.gallery-controls[data-gallery="run-gallery"] .min-score').fill("0")
    assert page.locator("#run-csv").get_attribute("href").startswith("detections?")
    page.screenshot(path=str(artifacts() / "gallery.png"), full_page=False)
    assert page.failed == [], page.failed


def test_observation_view_circles_every_detection(page, server, found):
    from urllib.parse import quote

    page.goto(f"{server['url']}{BASE}/astrid/ui#run={quote(RUN_KEY, safe='')}")
    page.wait_for_selector("body[data-loaded='true'][data-view='run']", timeout=60_000)
    first = page.locator("#run-observations tbody tr").first
    observation_id = int(first.get_attribute("data-observation-id"))
    first.locator("a").click()
    page.wait_for_selector("body[data-loaded='true'][data-view='observation']", timeout=60_000)
    assert _decoded(page, "#frame-img") == [512]  # 512² frame, factor 1
    expected = [d for d in found["catalog"].detections(observation_id)]
    circles = page.locator("#frame-overlay circle")
    assert circles.count() == len(expected) > 0
    widths = _decoded(page, "#obs-gallery img.stamp")
    assert len(widths) == len(expected) and all(w == 4 * 63 for w in widths)
    # a circle sits where its detection is: centre (x + 0.5, 512 - (y + 0.5)) in frame pixels
    by_id = {d["id"]: d for d in expected}
    for c in page.eval_on_selector_all(
        "#frame-overlay circle",
        "cs => cs.map(c => [Number(c.dataset.id), +c.getAttribute('cx'), +c.getAttribute('cy')])",
    ):
        d = by_id[c[0]]
        assert c[1] == pytest.approx(d["x"] + 0.5) and c[2] == pytest.approx(512 - (d["y"] + 0.5))
    # click-through: a circle selects its detection's card (and its stamps)
    target = expected[-1]["id"]
    page.locator(f'#frame-overlay circle[data-id="{target}"]').dispatch_event("click")
    selected = page.locator("#obs-gallery .card.selected")
    assert selected.count() == 1 and selected.get_attribute("data-id") == str(target)
    assert page.locator(f'#frame-overlay circle.selected[data-id="{target}"]').count() == 1
    page.screenshot(path=str(artifacts() / "observation.png"), full_page=True)
    assert page.failed == [], page.failed
