"""FITS I/O: load_triplet reads good triplets and refuses bad files with a FitsError that names them."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np
import pytest
from astropy.io import fits
from upath import UPath

from astrid.errors import FitsError, ObservationError
from astrid.imaging.fits import Triplet, load_triplet, max_file_bytes, write_image
from astrid.imaging.synthetic import SyntheticObservation, make_observation, write_observation

SIZE = 96


@pytest.fixture(scope="module")
def obs() -> SyntheticObservation:
    return make_observation(3, SIZE, n_transients=3)


@pytest.fixture()
def files(obs: SyntheticObservation, tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    uris = write_observation(obs, tmp_path, "obs003")
    return {k.removesuffix("_uri"): pathlib.Path(v) for k, v in uris.items()}


def _write(path: pathlib.Path, data: np.ndarray | None, header: fits.Header | None = None) -> pathlib.Path:
    fits.PrimaryHDU(data=data, header=header).writeto(path)
    return path


def _refuses(match: str, *args, **kwargs) -> FitsError:
    with pytest.raises(FitsError, match=match) as info:
        load_triplet(*args, **kwargs)
    assert isinstance(info.value, ObservationError)
    return info.value


# -- good files ----------------------------------------------------------------------------


def test_round_trip_local_paths(obs: SyntheticObservation, files) -> None:
    t = load_triplet(files["science"], files["reference"], files["difference"])
    assert isinstance(t, Triplet)
    assert t.name == "obs003"
    assert t.problems == []
    for name in ("science", "reference", "difference"):
        arr = getattr(t, name)
        assert arr.dtype == np.float32 and arr.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(arr, getattr(obs, name))
    assert t.header["FWHM"] == obs.header["FWHM"]
    assert t.wcs is not None
    np.testing.assert_allclose(
        t.wcs.all_pix2world([[10.0, 20.0]], 0), obs.wcs.all_pix2world([[10.0, 20.0]], 0)
    )


def test_str_upath_and_file_uri_are_accepted(obs: SyntheticObservation, files) -> None:
    t1 = load_triplet(str(files["science"]), str(files["reference"]), name="x")
    t2 = load_triplet(UPath(files["science"]), UPath(files["reference"]))
    t3 = load_triplet(files["science"].as_uri(), files["reference"].as_uri())
    assert t1.name == "x" and t2.name == "obs003"
    for t in (t1, t2, t3):
        np.testing.assert_array_equal(t.reference, obs.reference.astype(np.float32))
        # never science − reference (every star a residual): the subtraction step makes it, or refuses
        assert t.difference is None


def test_gzip_and_extension_images_and_degenerate_axes(tmp_path, obs: SyntheticObservation) -> None:
    buf = tmp_path / "plain.fits"
    write_image(buf, obs.science, obs.header)
    gz = tmp_path / "sci.fits.gz"
    gz.write_bytes(gzip.compress(buf.read_bytes()))
    primary = fits.PrimaryHDU()
    primary.header["MJD-OBS"] = 60000.5
    primary.header["FILTER"] = "r"
    ext = fits.ImageHDU(data=obs.reference.astype(">f8"), name="SCI")
    mef = tmp_path / "ref.fits"
    fits.HDUList([primary, ext, fits.ImageHDU(np.zeros((4, 4), np.int16), name="MASK")]).writeto(mef)
    cube = _write(tmp_path / "diff.fits", obs.difference[None, :, :])
    t = load_triplet(gz, mef, cube)
    assert t.name == "sci"
    np.testing.assert_array_equal(t.science, obs.science)
    np.testing.assert_array_equal(t.reference, obs.reference)
    np.testing.assert_array_equal(t.difference, obs.difference)
    # keywords of a multi-extension file's primary header are visible on the image's header
    t2 = load_triplet(mef, mef)
    assert t2.header["MJD-OBS"] == 60000.5 and t2.header["EXTNAME"] == "SCI"


def test_scaled_integers_are_returned_as_float32(tmp_path) -> None:
    hdu = fits.PrimaryHDU(data=np.arange(64 * 64, dtype=np.float64).reshape(64, 64))
    hdu.scale("int16", bzero=2048, bscale=1.0)
    hdu.writeto(tmp_path / "i16.fits")
    t = load_triplet(tmp_path / "i16.fits", tmp_path / "i16.fits")
    assert t.science.dtype == np.float32
    assert t.science[1, 0] == 64.0
    assert t.reference.dtype == np.float32 and t.difference is None


def test_some_non_finite_pixels_are_replaced_and_reported(tmp_path, obs: SyntheticObservation, files) -> None:
    data = obs.science.copy()
    data[:10, :] = np.nan
    data[20, 20] = np.inf
    bad = _write(tmp_path / "holes.fits", data, obs.header)
    t = load_triplet(bad, files["reference"])
    assert np.isfinite(t.science).all()
    assert t.science[0, 0] == pytest.approx(
        float(np.median(obs.science[10:][np.isfinite(obs.science[10:])])), rel=0.05
    )
    assert len(t.problems) == 1 and "holes.fits" in t.problems[0] and str(10 * SIZE + 1) in t.problems[0]


def test_missing_or_broken_wcs_gives_none_and_a_problem(tmp_path, obs: SyntheticObservation, files) -> None:
    no_wcs = _write(tmp_path / "nowcs.fits", obs.science)
    t = load_triplet(no_wcs, files["reference"])
    assert t.wcs is None and any("nowcs.fits" in p and "WCS" in p for p in t.problems)

    header = obs.header.copy()
    header["CTYPE1"] = "RA---XYZ"
    broken = _write(tmp_path / "badproj.fits", obs.science, header)
    t = load_triplet(broken, files["reference"])
    assert t.wcs is None and any("badproj.fits" in p and "WCS" in p for p in t.problems)

    header = obs.header.copy()
    for key in [k for k in header if k.startswith(("PC", "CD"))]:
        header[key] = 0.0
    singular = _write(tmp_path / "singular.fits", obs.science, header)
    t = load_triplet(singular, files["reference"])
    assert t.wcs is None and any("singular.fits" in p for p in t.problems)


# -- refusals ------------------------------------------------------------------------------


def test_missing_file(files, tmp_path) -> None:
    e = _refuses("does not exist", tmp_path / "nope_sci.fits", files["reference"])
    assert "nope_sci.fits" in str(e) and "science" in str(e)
    e = _refuses("does not exist", files["science"], files["reference"], tmp_path / "gone.fits")
    assert "gone.fits" in str(e) and "difference" in str(e)


def test_empty_and_truncated_files(files, tmp_path) -> None:
    raw = files["science"].read_bytes()
    (tmp_path / "empty.fits").write_bytes(b"")
    _refuses(r"empty\.fits is empty", tmp_path / "empty.fits", files["reference"])
    (tmp_path / "cut_data.fits").write_bytes(raw[: len(raw) - 4000])
    _refuses(r"cut_data\.fits is truncated", tmp_path / "cut_data.fits", files["reference"])
    (tmp_path / "cut_header.fits").write_bytes(raw[:1500])
    _refuses(r"cut_header\.fits is truncated", tmp_path / "cut_header.fits", files["reference"])
    (tmp_path / "cut_block.fits").write_bytes(raw[: 2 * 2880 - 7])
    _refuses(r"cut_block\.fits is truncated", files["science"], tmp_path / "cut_block.fits")
    gz = tmp_path / "cut.fits.gz"
    gz.write_bytes(gzip.compress(raw)[:3000])
    _refuses(r"cut\.fits\.gz is truncated", gz, files["reference"])


def test_not_a_fits_file(files, tmp_path) -> None:
    (tmp_path / "notes.fits").write_text("observation log\n" * 400)
    e = _refuses("not a FITS file", tmp_path / "notes.fits", files["reference"])
    assert "notes.fits" in str(e)
    (tmp_path / "img.fits").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    _refuses(r"img\.fits is not a FITS file", files["science"], tmp_path / "img.fits")


def test_no_2d_image(tmp_path, files) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.ones(5))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "table.fits")
    e = _refuses("no 2-D image", tmp_path / "table.fits", files["reference"])
    assert "table.fits" in str(e) and "BinTableHDU" in str(e)
    _write(tmp_path / "spectrum.fits", np.ones(500, np.float32))
    _refuses(r"spectrum\.fits has no 2-D image", tmp_path / "spectrum.fits", files["reference"])
    _write(tmp_path / "cube.fits", np.ones((3, 20, 20), np.float32))
    _refuses(r"cube\.fits has no 2-D image", tmp_path / "cube.fits", files["reference"])


def test_shape_mismatch(tmp_path, files, obs: SyntheticObservation) -> None:
    small = _write(tmp_path / "small_ref.fits", obs.reference[:80, :90])
    e = _refuses("shape mismatch", files["science"], small)
    assert "small_ref.fits" in str(e) and "90×80" in str(e) and "obs003_sci.fits" in str(e)
    _refuses(r"shape mismatch.*difference", files["science"], files["reference"], small)


def test_frame_larger_than_max_side_is_refused_from_the_header(files) -> None:
    e = _refuses(r"larger than max_side=64", files["science"], files["reference"], max_side=64)
    assert f"{SIZE}×{SIZE}" in str(e)


class _CountingPath:
    """A path-like whose open() is recorded: the size check must refuse before any read."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.opened = 0

    def stat(self):
        return self.path.stat()

    def open(self, mode: str = "rb"):
        self.opened += 1
        return self.path.open(mode)

    def joinpath(self, *parts: str):
        return self.path.joinpath(*parts)

    def __str__(self) -> str:
        return str(self.path)


def test_oversized_file_is_refused_before_reading(tmp_path, files) -> None:
    big = _write(tmp_path / "big.fits", np.zeros((400, 400), np.float64))
    assert big.stat().st_size > max_file_bytes(32)
    counted = _CountingPath(big)
    e = _refuses(r"big\.fits is \d+ bytes", counted, files["reference"], max_side=32)
    assert "ASTRID_INFERENCE_MAX_IMAGE_SIDE" in str(e)
    assert counted.opened == 0
    ok = _CountingPath(files["science"])
    load_triplet(ok, files["reference"])
    assert ok.opened == 1


def test_nan_dominated_image_is_refused(tmp_path, files, obs: SyntheticObservation) -> None:
    data = obs.reference.copy()
    data[:48] = np.nan
    data[48:50] = np.inf
    _write(tmp_path / "masked.fits", data)
    e = _refuses(r"masked\.fits is mostly NaN/inf", files["science"], tmp_path / "masked.fits")
    assert f"{46 / 96:.1%} finite" in str(e)
    data[47:] = 0.0  # just above half finite: accepted, with the replacement reported
    _write(tmp_path / "half.fits", data)
    t = load_triplet(files["science"], tmp_path / "half.fits")
    assert np.isfinite(t.reference).all() and "half.fits" in t.problems[0]


def test_write_image_validates_and_accepts_str(tmp_path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        write_image(tmp_path / "x.fits", np.zeros((2, 3, 4)))
    out = write_image(str(tmp_path / "y.fits"), np.ones((5, 6), np.int32))
    with fits.open(out) as hdul:
        assert hdul[0].data.dtype.kind == "f" and hdul[0].data.shape == (5, 6)
