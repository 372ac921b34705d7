"""The detections API: filters and cone search on a seeded catalog against brute force, pages,
CSV and VOTable exports, stamps and frames served by id, and every refused parameter.

The catalog is real (SQLite), the stamps and FITS frames are real files in a real storage root,
and authentication is Airflow's own (a JWT from the simple auth manager), as in test_status_api.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import timedelta

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.time import Time
from PIL import Image

from astrid import detections as found
from astrid.catalog import Catalog, NewObservation
from astrid.imaging.synthetic import make_observation, write_observation
from astrid.ml.detect import Detection
from astrid.stamps import stamp_prefix, write_stamps
from astrid.storage import StorageRoot

RT = "astrid_realtime_inference"
LEASE = timedelta(minutes=30)
# places where a cone search goes wrong if it is done naively: RA 0/360, both poles, high dec
SPECIAL = [
    (0.0, 0.0),
    (359.99, 0.0),
    (0.01, 45.0),
    (359.9, -60.0),
    (10.0, 89.95),
    (190.0, 89.97),
    (300.0, -89.9),
]


def _sky_points(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """``n`` points uniform on the sphere, plus clusters around the special places."""
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    points = list(zip(ra, dec, strict=True))
    for ra0, dec0 in SPECIAL:
        for _ in range(40):
            d = float(np.clip(dec0 + rng.normal(0, 0.15), -90, 90))
            r = float((ra0 + rng.normal(0, 0.15) / max(math.cos(math.radians(d)), 0.02)) % 360.0)
            points.append((r, d))
    return [(float(r), float(d)) for r, d in points]


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """A catalog of 12 sky observations (two runs, two model versions) and one real synthetic
    observation with files and stamps in a storage root; plus every stored detection as a dict."""
    tmp = tmp_path_factory.mktemp("detections-api")
    catalog = Catalog(f"sqlite:///{tmp / 'catalog.db'}")
    catalog.migrate()
    storage = StorageRoot(tmp / "store")
    (tmp / "store").mkdir()
    rng = np.random.default_rng(16)
    points = _sky_points(rng, 1500)
    chunks = np.array_split(np.arange(len(points)), 12)
    for i, chunk in enumerate(chunks):
        catalog.register(
            [
                NewObservation(
                    name=f"sky-{i:02d}",
                    science_uri=f"s{i}.fits",
                    reference_uri=f"r{i}.fits",
                    mjd=60000.0 + i,
                    filter="gr"[i % 2],
                )
            ]
        )
        run_id = f"{RT}:run-{1 + i % 2}"
        (claim,) = catalog.claim(1, run_id, LEASE)
        dets = []
        for j in chunk:
            ra, dec = points[j]
            flux = float(rng.uniform(-50, 5000))
            dets.append(
                Detection(
                    float(j),
                    float(j),
                    ra,
                    dec,
                    float(rng.uniform(0.5, 1)),
                    flux,
                    40.0,
                    flux / 40.0,
                    25.0 - 2.5 * math.log10(flux) if flux > 0 else None,
                    0.1 if flux > 0 else None,
                )
            )
        catalog.complete(claim, run_id, "v1" if i < 8 else "v2", dets)

    obs = make_observation(9160, size=256, n_transients=5)
    uris = write_observation(obs, storage.path / "observations", "real-1")
    (real_id,) = catalog.register(
        [
            NewObservation(
                name="real-1",
                science_uri=storage.uri_for(uris["science_uri"]),
                reference_uri=storage.uri_for(uris["reference_uri"]),
                difference_uri=storage.uri_for(uris["difference_uri"]),
                mjd=float(obs.header["MJD-OBS"]),
            )
        ]
    )
    (claim,) = catalog.claim(1, f"{RT}:run-3", LEASE)
    dets = []
    for t in obs.truth:
        ra, dec = obs.wcs.pixel_to_world_values(t.x, t.y)
        dets.append(Detection(t.x, t.y, float(ra), float(dec), 0.9, t.flux))
    probability = np.zeros(obs.difference.shape, np.float32)
    directory = stamp_prefix(storage.path / "runs" / "run-3", real_id, "real-1")
    stamped = write_stamps(directory, obs, probability, dets, storage=storage, limit=len(dets) - 1)
    dets = [Detection(**{**d.to_dict(), "stamp_uri": u}) for d, u in zip(dets, stamped, strict=True)]
    catalog.complete(claim, f"{RT}:run-3", "v1", dets)
    rows = [{**r, "observation": catalog.get(r["observation_id"])["name"]} for r in catalog.detections()]
    yield {"catalog": catalog, "storage": storage, "rows": rows, "real_id": real_id, "obs": obs}
    catalog.dispose()


def _order(rows):
    return [r["id"] for r in sorted(rows, key=lambda r: (-r["score"], r["id"]))]


# ------------------------------------------------------------------------------- core: geometry


@pytest.mark.parametrize(
    ("ra", "dec", "radius"),
    [
        (0.0, 0.0, 0.3),
        (359.95, 0.05, 0.2),
        (0.05, 45.0, 0.4),
        (359.9, -60.0, 0.5),
        (10.0, 89.95, 0.1),  # the pole inside the cone
        (100.0, 89.8, 0.3),
        (300.0, -89.9, 0.2),
        (180.0, 0.0, 10.0),
        (45.0, 30.0, 7.5),
        (200.0, -85.0, 5.0),  # reaches past the south pole
        (359.999, 89.999, 0.0001),
    ],
)
def test_cone_search_equals_brute_force_with_astropy(sky, ra, dec, radius):
    rows = [r for r in sky["rows"] if r["ra"] is not None]
    centre = SkyCoord(ra, dec, unit="deg")
    sep = centre.separation(SkyCoord([r["ra"] for r in rows], [r["dec"] for r in rows], unit="deg")).deg
    expected = [r for r, s in zip(rows, sep, strict=True) if s <= radius]
    page = found.search(
        sky["catalog"], found.DetectionQuery(cone=found.Cone(ra, dec, radius), limit=found.MAX_LIMIT)
    )
    assert [r["id"] for r in page.rows] == _order(expected)
    by_id = dict(zip([r["id"] for r in rows], sep, strict=True))
    for r in page.rows:
        assert r["separation"] == pytest.approx(by_id[r["id"]] * 3600, abs=1e-6)


def test_cone_box_contains_the_cone():
    rng = np.random.default_rng(3)
    for _ in range(300):
        cone = found.Cone(
            float(rng.uniform(0, 360)), float(rng.uniform(-90, 90)), float(rng.uniform(1e-4, 10))
        )
        dec_min, dec_max, ranges = cone.box()
        # points on the cone's edge lie in the box
        edge = SkyCoord(cone.ra, cone.dec, unit="deg").directional_offset_by(
            np.linspace(0, 360, 73) * u.deg, cone.radius * u.deg
        )
        for p in edge:
            assert dec_min - 1e-7 <= p.dec.deg <= dec_max + 1e-7
            if ranges is not None:
                assert any(lo - 1e-7 <= p.ra.deg % 360 <= hi + 1e-7 for lo, hi in ranges), (cone, p)


def test_filters_and_pages_equal_brute_force(sky):
    rows = sky["rows"]
    cases = [
        ({"run_id": f"{RT}:run-1"}, lambda r: r["run_id"] == f"{RT}:run-1"),
        (
            {"observation_id": rows[0]["observation_id"]},
            lambda r: r["observation_id"] == rows[0]["observation_id"],
        ),
        ({"model_version": "v2"}, lambda r: r["model_version"] == "v2"),
        ({"min_score": 0.8}, lambda r: r["score"] >= 0.8),
        (
            {"mjd_from": 60003.0, "mjd_to": 60006.0},
            lambda r: r["observation"] in {f"sky-0{i}" for i in (3, 4, 5)},
        ),
        (
            {"model_version": "v1", "min_score": 0.95, "run_id": f"{RT}:run-2"},
            lambda r: r["model_version"] == "v1" and r["score"] >= 0.95 and r["run_id"] == f"{RT}:run-2",
        ),
    ]
    for params, keep in cases:
        expected = _order([r for r in rows if keep(r)])
        assert expected, params
        got, offset = [], 0
        while offset is not None:  # walk the pages
            page = found.search(sky["catalog"], found.DetectionQuery(**params, limit=37, offset=offset))
            assert len(page.rows) <= 37
            got += [r["id"] for r in page.rows]
            offset = page.next_offset
        assert got == expected, params


def test_time_range_is_the_observation_time():
    start = Time(60003.25, format="mjd").to_datetime()
    assert found.mjd(start) == pytest.approx(60003.25, abs=1e-9)


def test_csv_and_votable_exports_carry_units(sky):
    page = found.search(sky["catalog"], found.DetectionQuery(cone=found.Cone(0.0, 0.0, 0.3), limit=50))
    assert page.rows
    text = found.to_csv(page.rows)
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == [*found.COLUMNS]  # a cone search adds the separation
    assert [int(r["id"]) for r in reader] == [r["id"] for r in page.rows]
    table = parse_single_table(io.BytesIO(found.to_votable(page.rows, "test")))
    units = {f.name: (str(f.unit) if f.unit is not None else None) for f in table.fields}
    assert units["ra"] == "deg" and units["dec"] == "deg" and units["mag"] == "mag" and units["x"] == "pix"
    assert units["separation"] == "arcsec" and units["mjd"] == "d"
    ucds = {f.name: f.ucd for f in table.fields}
    assert ucds["ra"] == "pos.eq.ra;meta.main"
    data = table.to_table()
    assert list(data["id"]) == [r["id"] for r in page.rows]
    np.testing.assert_allclose(data["ra"], [r["ra"] for r in page.rows])
    no_mag = [i for i, r in enumerate(page.rows) if r["mag"] is None]
    assert no_mag and all(data["mag"].mask[i] for i in no_mag)  # missing stays missing, not 0


# ------------------------------------------------------------------------------- the FastAPI app


@pytest.fixture(scope="module")
def auth(airflow_db):
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


@pytest.fixture
def client(sky, auth):
    from fastapi.testclient import TestClient

    from astrid.airflow import api

    app = api.create_app()
    app.dependency_overrides[api.catalog_opener] = lambda: lambda: sky["catalog"]
    app.dependency_overrides[api.storage_opener] = lambda: lambda: sky["storage"]
    with TestClient(app, headers={"Authorization": f"Bearer {auth}"}) as c:
        yield c


@pytest.mark.parametrize(
    "path",
    [
        "/detections",
        "/detections/1",
        "/detections/1/stamp.png",
        "/observations?run_id=x",
        "/observations/1",
        "/observations/1/frame.png",
    ],
)
def test_everything_needs_airflow_auth(sky, auth, path):
    from fastapi.testclient import TestClient

    from astrid.airflow import api

    app = api.create_app()
    app.dependency_overrides[api.catalog_opener] = lambda: lambda: sky["catalog"]
    with TestClient(app) as anonymous:
        assert anonymous.get(path).status_code == 401
        assert anonymous.get(path, headers={"Authorization": "Bearer forged.token.x"}).status_code in (
            401,
            403,
        )


def test_detections_json_filters_and_pages(client, sky):
    r = client.get("/detections", params={"run_id": f"{RT}:run-2", "min_score": 0.9, "limit": 25})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = _order([x for x in sky["rows"] if x["run_id"] == f"{RT}:run-2" and x["score"] >= 0.9])
    assert [d["id"] for d in body["detections"]] == expected[:25]
    assert body["count"] == 25 and body["next_offset"] == 25
    first = body["detections"][0]
    assert {"ra", "dec", "flux", "flux_err", "snr", "mag", "mjd", "filter", "observation"} <= set(first)
    assert "stamp_uri" not in first  # storage locations stay inside
    last = client.get(
        "/detections",
        params={"run_id": f"{RT}:run-2", "min_score": 0.9, "limit": 25, "offset": 25 * (len(expected) // 25)},
    )
    assert last.json()["next_offset"] is None
    # time range: observations sky-03..sky-05
    start, end = Time(60003, format="mjd").isot, Time(60006, format="mjd").isot
    r = client.get("/detections", params={"start": start, "end": end, "limit": 10000})
    assert {d["observation"] for d in r.json()["detections"]} == {"sky-03", "sky-04", "sky-05"}
    r = client.get("/detections", params={"start": start + "+00:00", "end": end + "Z", "limit": 10000})
    assert r.status_code == 200 and {d["observation"] for d in r.json()["detections"]} == {
        "sky-03",
        "sky-04",
        "sky-05",
    }


def test_cone_search_over_http_and_exports(client, sky):
    r = client.get("/detections", params={"ra": 359.99, "dec": 0.0, "radius": 0.25, "limit": 1000})
    assert r.status_code == 200, r.text
    rows = r.json()["detections"]
    centre = SkyCoord(359.99, 0.0, unit="deg")
    for d in rows:
        assert centre.separation(SkyCoord(d["ra"], d["dec"], unit="deg")).arcsec == pytest.approx(
            d["separation"], abs=1e-6
        )
    assert {d["ra"] < 1 for d in rows} == {True, False}  # both sides of RA = 0
    csv_r = client.get(
        "/detections", params={"ra": 359.99, "dec": 0.0, "radius": 0.25, "format": "csv", "limit": 5}
    )
    assert csv_r.headers["content-type"].startswith("text/csv")
    assert (
        'rel="next"' in csv_r.headers["link"]
        and "offset=5" in csv_r.headers["link"]
        and "ra=359.99" in csv_r.headers["link"]
    )
    assert len(list(csv.DictReader(io.StringIO(csv_r.text)))) == 5
    vo = client.get("/detections", params={"run_id": f"{RT}:run-3", "format": "votable"})
    assert vo.headers["content-type"].startswith("application/x-votable+xml")
    table = parse_single_table(io.BytesIO(vo.content)).to_table()
    assert len(table) == len(sky["obs"].truth) and str(table["ra"].unit) == "deg"


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"ra": "nan", "dec": 0, "radius": 1}, "ra"),
        ({"ra": "inf", "dec": 0, "radius": 1}, "ra"),
        ({"ra": 10, "dec": "-inf", "radius": 1}, "dec"),
        ({"ra": 10, "dec": 91, "radius": 1}, "dec"),
        ({"ra": 10, "dec": -90.5, "radius": 1}, "dec"),
        ({"ra": 361, "dec": 0, "radius": 1}, "ra"),
        ({"ra": -1, "dec": 0, "radius": 1}, "ra"),
        ({"ra": 10, "dec": 0, "radius": -1}, "radius"),
        ({"ra": 10, "dec": 0, "radius": 0}, "radius"),
        ({"ra": 10, "dec": 0, "radius": "nan"}, "radius"),
        ({"ra": 10, "dec": 0, "radius": 11}, "radius"),
        ({"ra": 10, "dec": 0}, "radius"),
        ({"radius": 1}, "ra"),
        ({"limit": 0}, "limit"),
        ({"limit": 10001}, "limit"),
        ({"limit": 10**30}, "limit"),
        ({"offset": -1}, "offset"),
        ({"min_score": 1.5}, "min_score"),
        ({"min_score": "nan"}, "min_score"),
        ({"observation_id": "abc"}, "observation_id"),
        ({"observation_id": 0}, "observation_id"),
        ({"model_version": "v1; drop table"}, "model_version"),
        ({"run_id": "x" * 301}, "run_id"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-01-02T00:00:00", "end": "2026-01-01T00:00:00"}, "end"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_parameters_are_422_naming_them(client, params, name):
    r = client.get("/detections", params=params)
    assert r.status_code == 422, r.text
    assert [name] == [e["loc"][-1] for e in r.json()["detail"]][:1], r.text


def test_stamps_served_by_id_never_by_path(client, sky):
    rows = [r for r in sky["rows"] if r["run_id"] == f"{RT}:run-3"]
    stamped = [r for r in rows if r["stamp_uri"]]
    bare = [r for r in rows if not r["stamp_uri"]]
    assert stamped and bare
    detail = client.get(f"/detections/{stamped[0]['id']}").json()
    assert detail["stamp_png"] == f"detections/{stamped[0]['id']}/stamp.png"
    png = client.get(f"/detections/{stamped[0]['id']}/stamp.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (4 * 63, 63)
    fit = client.get(detail["stamp_fits"].join(["/", ""]))
    with fits.open(io.BytesIO(fit.content)) as hdus:
        assert [h.name for h in hdus][1:] == ["SCIENCE", "REFERENCE", "DIFFERENCE", "PROBABILITY"]
    assert client.get(f"/detections/{bare[0]['id']}/stamp.png").status_code == 404
    assert client.get(f"/detections/{bare[0]['id']}").json()["stamp_png"] is None
    assert client.get("/detections/999999/stamp.png").status_code == 404
    assert client.get("/detections/1/stamp.gif").status_code == 422
    for bad in (
        "/detections/..%2F..%2Fetc%2Fpasswd/stamp.png",
        "/detections/-1/stamp.png",
        "/detections/1e3/stamp.png",
    ):
        assert client.get(bad).status_code in (404, 422), bad


def test_a_tampered_stamp_uri_is_refused_by_the_storage_root(client, sky, tmp_path, caplog):
    """A catalog row pointing outside the storage root (a valid strip sits there) is never served."""
    catalog = sky["catalog"]
    target = next(r for r in sky["rows"] if r["stamp_uri"])
    real_strip = sky["storage"].resolve(target["stamp_uri"].rpartition("#")[0] + ".png")
    (tmp_path / "secret.png").write_bytes(real_strip.read_bytes())
    outside = tmp_path.relative_to(tmp_path.anchor)
    for uri in (f"{(tmp_path / 'secret').as_uri()}#0", f"runs/../../../../../../{outside}/secret#0"):
        with catalog.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE detections SET stamp_uri = ? WHERE id = ?", (uri, target["id"]))
        try:
            caplog.clear()
            r = client.get(f"/detections/{target['id']}/stamp.png")
            assert r.status_code == 404, uri
            assert r.headers["content-type"].startswith("application/json") and "secret" not in r.text
            assert "refused" in caplog.text
        finally:
            with catalog.engine.begin() as conn:
                conn.exec_driver_sql(
                    "UPDATE detections SET stamp_uri = ? WHERE id = ?", (target["stamp_uri"], target["id"])
                )
    assert client.get(f"/detections/{target['id']}/stamp.png").status_code == 200


def test_run_observations_and_the_observation_view(client, sky):
    r = client.get("/observations", params={"run_id": f"{RT}:run-1"})
    assert r.status_code == 200
    names = [o["name"] for o in r.json()]
    assert names == [f"sky-{i:02d}" for i in range(0, 12, 2)]
    assert all(o["detections"] > 0 and 0.5 <= o["best_score"] <= 1 for o in r.json())
    assert client.get("/observations").status_code == 422  # run_id is required

    real = sky["real_id"]
    view = client.get(f"/observations/{real}")
    assert view.status_code == 200, view.text
    body = view.json()
    assert (body["width"], body["height"], body["frame_factor"]) == (256, 256, 1)
    assert len(body["detections"]) == len(sky["obs"].truth)
    frame = client.get(body["frame_png"].join(["/", ""]))
    assert frame.status_code == 200 and Image.open(io.BytesIO(frame.content)).size == (256, 256)
    assert client.get(f"/observations/{real}/frame.png", params={"kind": "difference"}).status_code == 200
    assert client.get(f"/observations/{real}/frame.png", params={"kind": "reference"}).status_code == 422
    sky_obs = r.json()[0]["id"]  # catalog-only: its files do not exist
    assert client.get(f"/observations/{sky_obs}/frame.png").status_code == 404
    without_files = client.get(f"/observations/{sky_obs}").json()  # its detections still show
    assert without_files["frame_png"] is None and without_files["width"] is None
    assert len(without_files["detections"]) > 0
    assert client.get("/observations/999999").status_code == 404


def test_openapi_documents_the_detections_api(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/detections", "/detections/{detection_id}", "/detections/{detection_id}/stamp.{kind}"} <= set(
        paths
    )
    params = {p["name"]: p for p in paths["/detections"]["get"]["parameters"]}
    assert {
        "run_id",
        "observation_id",
        "model_version",
        "min_score",
        "start",
        "end",
        "ra",
        "dec",
        "radius",
        "limit",
        "offset",
        "format",
    } <= set(params)
    assert params["radius"]["schema"]["anyOf"][0]["maximum"] == found.MAX_RADIUS
    content = paths["/detections"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/csv", "application/x-votable+xml"} <= set(content)
    props = schema["components"]["schemas"]["DetectionOut"]["properties"]
    assert "[deg]" in props["ra"]["description"] and "[mag]" in props["mag"]["description"]
