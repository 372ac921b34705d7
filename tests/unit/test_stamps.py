"""Stamps: geometry and WCS against astropy, frame edges, the PNG and FITS files, local and S3 storage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from PIL import Image
from upath import UPath

from astrid.imaging.synthetic import make_observation
from astrid.ml.detect import Detection
from astrid.stamps import (
    KINDS,
    PAD_RGB,
    STAMP_SIZE,
    cutout,
    detection_fits,
    detection_png,
    fits_card,
    split_stamp_uri,
    stamp_fits,
    stamp_png,
    stamp_prefix,
    write_stamps,
)
from astrid.storage import StorageRoot
from tests.conftest import s3_storage_options

C = STAMP_SIZE // 2


@pytest.fixture(scope="module")
def observation():
    obs = make_observation(16016, size=256, n_transients=6)
    assert obs.wcs is not None and len(obs.truth) >= 4
    return obs


@pytest.fixture(scope="module")
def probability(observation):
    return np.random.default_rng(0).uniform(0, 1, observation.difference.shape).astype(np.float32)


def _frame(observation, probability, kind):
    return probability if kind == "probability" else getattr(observation, kind)


def test_a_source_at_known_sky_position_lands_on_the_centre_pixel(observation, probability):
    """Through the stamp's own WCS, the transient's RA/Dec is the detection's stamp position,
    within half a pixel of the centre pixel; the centre pixel is the frame pixel holding it."""
    for t in observation.truth:
        sky = observation.wcs.pixel_to_world(t.x, t.y)  # a known RA/Dec
        stamp = cutout(observation, probability, t.x, t.y)
        px, py = stamp.wcs.world_to_pixel(SkyCoord(sky.ra, sky.dec))
        assert (float(px), float(py)) == pytest.approx(stamp.position, abs=1e-6)
        assert abs(px - C) <= 0.5 and abs(py - C) <= 0.5
        ix, iy = round(t.x), round(t.y)
        assert stamp.origin == (ix - C, iy - C)
        for kind in KINDS:
            image = stamp.images[kind]
            assert image.shape == (STAMP_SIZE, STAMP_SIZE) and image.dtype == np.float32
            assert image[C, C] == _frame(observation, probability, kind)[iy, ix]
        h, w = observation.difference.shape
        assert stamp.partial == (not (C <= ix < w - C and C <= iy < h - C))


@pytest.mark.parametrize(("x", "y"), [(0.3, 0.2), (255.4, 255.0), (254.9, 5.6), (3.0, 128.2), (128.0, 250.0)])
def test_frame_edges_are_padded_never_shifted(observation, probability, x, y):
    stamp = cutout(observation, probability, x, y)
    ix, iy = round(x), round(y)
    assert stamp.origin == (ix - C, iy - C)  # the centre pixel is still the detection's
    assert stamp.partial and 0 < stamp.coverage < 1
    h, w = observation.difference.shape
    rows = np.arange(STAMP_SIZE)[:, None] + stamp.origin[1]
    cols = np.arange(STAMP_SIZE)[None, :] + stamp.origin[0]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    assert stamp.coverage == pytest.approx(inside.mean())
    for kind in KINDS:
        image = stamp.images[kind]
        assert np.isnan(image[~inside]).all()
        frame = _frame(observation, probability, kind)
        np.testing.assert_array_equal(
            image[inside],
            frame[np.broadcast_to(rows, inside.shape)[inside], np.broadcast_to(cols, inside.shape)[inside]],
        )
    # exactly astropy's Cutout2D (its data, and its WCS: the frame's, moved by the true origin)
    ref = Cutout2D(
        observation.science, (x, y), STAMP_SIZE, wcs=observation.wcs, mode="partial", fill_value=np.nan
    )
    np.testing.assert_array_equal(stamp.images["science"], ref.data)
    np.testing.assert_array_equal(stamp.wcs.wcs.crpix, ref.wcs.wcs.crpix)
    assert stamp.wcs.array_shape == ref.wcs.array_shape
    sky = observation.wcs.pixel_to_world(x, y)
    px, py = stamp.wcs.world_to_pixel(sky)
    assert (float(px), float(py)) == pytest.approx((x - stamp.origin[0], y - stamp.origin[1]), abs=1e-6)
    corner = stamp.wcs.pixel_to_world(0, 0)
    assert corner.separation(observation.wcs.pixel_to_world(*stamp.origin)).arcsec < 1e-6


def test_fits_stamp_has_wcs_flags_and_detection(observation, probability):
    det = Detection(1.4, 130.7, None, None, 0.93, 812.0, flux_err=40.0, snr=20.3, mag=20.1, mag_err=0.05)
    ra, dec = observation.wcs.pixel_to_world_values(det.x, det.y)
    det = Detection(det.x, det.y, float(ra), float(dec), 0.93, 812.0, 40.0, 20.3, 20.1, 0.05)
    stamp = cutout(observation, probability, det.x, det.y)
    reference = Cutout2D(observation.science, (det.x, det.y), STAMP_SIZE, wcs=observation.wcs, mode="partial")
    with fits.open(io.BytesIO(stamp_fits(stamp, det, "obs-1"))) as hdus:
        hdus.verify("exception")  # a valid FITS file, by astropy's rules
        assert [h.name for h in hdus] == ["PRIMARY", *(k.upper() for k in KINDS)]
        assert hdus[0].header["OBSNAME"] == "obs-1" and hdus[0].header["DETSCORE"] == pytest.approx(0.93)
        assert hdus[0].header["DETSNR"] == pytest.approx(20.3)
        for kind in KINDS:
            hdu = hdus[kind.upper()]
            np.testing.assert_array_equal(hdu.data, stamp.images[kind])
            h = hdu.header
            assert h["PARTIAL"] is True and h["COVERAGE"] == pytest.approx(stamp.coverage, abs=1e-6)
            # 1-based FITS pixel of the detection, through the file's own WCS
            px, py = WCS(h).world_to_pixel_values(ra, dec)
            assert (float(px) + 1, float(py) + 1) == pytest.approx((h["DETX"], h["DETY"]), abs=1e-3)
            # the file's WCS is astropy Cutout2D's WCS of this stamp, everywhere on it
            grid = np.array([[0, 0], [62, 0], [0, 62], [31.5, 17.25]], dtype=float)
            np.testing.assert_allclose(
                WCS(h).all_pix2world(grid, 0), reference.wcs.all_pix2world(grid, 0), rtol=0, atol=1e-10
            )
            # IRAF LTV: stamp pixel = frame pixel + LTV
            assert (det.x + 1 + h["LTV1"], det.y + 1 + h["LTV2"]) == pytest.approx(
                (h["DETX"], h["DETY"]), abs=1e-3
            )


def test_png_is_four_panels_scaled_with_padding_marked(observation, probability):
    t = observation.truth[0]
    image = Image.open(io.BytesIO(stamp_png(cutout(observation, probability, t.x, t.y))))
    assert image.format == "PNG" and image.size == (4 * STAMP_SIZE, STAMP_SIZE)
    pixels = np.asarray(image.convert("RGB"))
    assert not (pixels == PAD_RGB).all(axis=2).any()  # fully inside: no padding colour
    for i in range(4):
        panel = pixels[:, i * STAMP_SIZE : (i + 1) * STAMP_SIZE, 0]
        assert panel.std() > 5, f"panel {KINDS[i]} is flat"  # scaled, not a blank square
    # at the lower-left corner of the frame, padding fills the PNG's bottom rows (FITS rows go up)
    edge = np.asarray(
        Image.open(io.BytesIO(stamp_png(cutout(observation, probability, 2.0, 2.0)))).convert("RGB")
    )
    pad = (edge == PAD_RGB).all(axis=2)
    assert pad[-1, :].all() and not pad[0, STAMP_SIZE - 1]
    assert pad[:, 0].all()


def test_stamp_size_must_be_odd(observation, probability):
    with pytest.raises(ValueError, match="odd"):
        cutout(observation, probability, 10, 10, size=64)


def _detections(observation):
    return [Detection(t.x, t.y, None, None, 0.9 - 0.01 * i, 1.0) for i, t in enumerate(observation.truth)]


def test_write_stamps_local_with_limit(tmp_path, observation, probability):
    storage = StorageRoot(tmp_path)
    prefix = stamp_prefix(tmp_path / "runs" / "r1", 7, "obs/../seven")
    assert prefix.name == "7-obs_.._seven" and prefix.parent.name == "stamps"
    dets = _detections(observation)
    uris = write_stamps(prefix, observation, probability, dets, storage=storage, observation="obs7", limit=3)
    assert uris == [f"{prefix.as_uri()}#{rank}" for rank in range(3)] + [None] * (len(dets) - 3)
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["7-obs_.._seven.fits", "7-obs_.._seven.png"]
    strip = Image.open(storage.resolve(split_stamp_uri(uris[0])[0] + ".png"))
    assert strip.size == (4 * STAMP_SIZE, 3 * STAMP_SIZE)
    with fits.open(storage.resolve(split_stamp_uri(uris[0])[0] + ".fits")) as hdus:
        hdus.verify("exception")
        assert [h.name for h in hdus] == ["PRIMARY", "DET0000", "DET0001", "DET0002"]
        assert hdus[0].header["NSTAMPS"] == 3 and hdus[0].header["OBSNAME"] == "obs7"
        for rank, det in enumerate(dets[:3]):
            hdu = hdus[f"DET{rank:04d}"]
            stamp = cutout(observation, probability, det.x, det.y)
            assert hdu.data.shape == (4, STAMP_SIZE, STAMP_SIZE)
            for plane, kind in enumerate(KINDS):
                assert hdu.header[f"PLANE{plane + 1}"] == kind.upper()
                np.testing.assert_array_equal(hdu.data[plane], stamp.images[kind])
            # the cube's WCS on its first two axes is astropy Cutout2D's for this stamp
            reference = Cutout2D(
                observation.science, (det.x, det.y), STAMP_SIZE, wcs=observation.wcs, mode="partial"
            )
            grid = np.array([[0, 0], [62, 0], [0, 62], [31.5, 17.25]], dtype=float)
            np.testing.assert_allclose(
                WCS(hdu.header).celestial.all_pix2world(grid, 0),
                reference.wcs.all_pix2world(grid, 0),
                atol=1e-10,
                rtol=0,
            )
            assert hdu.header["DETSCORE"] == pytest.approx(det.score)
            # one detection's row of the strip, and its own FITS file, as the API serves them
            row = Image.open(io.BytesIO(detection_png(strip, rank)))
            assert np.array_equal(np.asarray(row), np.asarray(Image.open(io.BytesIO(stamp_png(stamp)))))
        with pytest.raises(IndexError):
            detection_png(strip, 3)
    with pytest.raises(IndexError):
        detection_fits(storage.resolve(split_stamp_uri(uris[0])[0] + ".fits"), 3)
    # nothing to write: no files
    empty = tmp_path / "runs" / "r2" / "stamps" / "x"
    assert write_stamps(empty, observation, probability, [], storage=storage) == []
    assert write_stamps(empty, observation, probability, dets, storage=storage, limit=0) == [None] * len(dets)
    assert not empty.parent.exists()


@pytest.mark.parametrize(
    "bad", ["", "file:///a/b", "file:///a/b#", "file:///a/b#x", "#3", "file:///a#-1", "f#1234567"]
)
def test_stamp_uris_are_prefix_hash_index(bad):
    assert split_stamp_uri("s3://b/runs/stamps/7-o#12") == ("s3://b/runs/stamps/7-o", 12)
    with pytest.raises(ValueError, match="stamp URI"):
        split_stamp_uri(bad)


def test_write_stamps_to_s3_is_two_objects(s3_endpoint, observation, probability):
    endpoint, client = s3_endpoint
    storage = StorageRoot(UPath("s3://astrid-survey/survey", **s3_storage_options(endpoint)))
    prefix = stamp_prefix(storage.path / "runs" / "dag" / "run1" / "infer--1", 3, "obs3")
    uris = write_stamps(prefix, observation, probability, _detections(observation), storage=storage)
    assert uris[1] == "s3://astrid-survey/survey/runs/dag/run1/infer--1/stamps/3-obs3#1"
    listing = client.list_objects_v2(Bucket="astrid-survey", Prefix="survey/runs/")["Contents"]
    assert {o["Key"] for o in listing} == {
        f"survey/runs/dag/run1/infer--1/stamps/3-obs3.{e}" for e in ("png", "fits")
    }
    body = client.get_object(Bucket="astrid-survey", Key="survey/runs/dag/run1/infer--1/stamps/3-obs3.png")
    assert Image.open(io.BytesIO(body["Body"].read())).size == (4 * STAMP_SIZE, len(uris) * STAMP_SIZE)
    with storage.resolve(split_stamp_uri(uris[1])[0] + ".fits").open("rb") as fh:
        served = detection_fits(fh, 1)
    with fits.open(io.BytesIO(served)) as hdus:
        assert [h.name for h in hdus][1:] == [k.upper() for k in KINDS]


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 1.0, 3, -17, 123.456789012345, -1e-05, 1e20, 2.5e-300, 0.1 + 0.2, 31.000000001, True, False],
)
def test_fast_cards_parse_back_exactly_in_astropy(value):
    card = fits_card("DETX", value, "a comment")
    assert len(card) == 80
    parsed = fits.Card.fromstring(card)
    parsed.verify("exception")
    assert parsed.keyword == "DETX" and parsed.value == value and type(parsed.value) is type(value)
    assert parsed.comment == "a comment"
    # and where the fast path does not apply, astropy formats it
    assert fits.Card.fromstring(fits_card("OBSNAME", "a 'quoted' name")).value == "a 'quoted' name"
    long = -1.2345678901234567e-300  # repr needs 24 characters: astropy shortens it, as it always does
    assert fits_card("LONGFLT", long, "c") == fits.Card("LONGFLT", long, "c").image
