"""Correct coordinates or none (issue 13 item 4), and bounded headers (item 7).

Each bad header is built from a good astropy WCS (the synthetic survey's), written to a real FITS
file, and followed to both ends: the quality gate (GX, through ``pipeline.quality_gate`` with a real
SQLite catalog) rejects the observation with the reason, and ``astrid detect`` writes empty RA/Dec
with a warning. Never a wrong number.
"""

from __future__ import annotations

import csv
import tracemalloc
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrid.catalog import Catalog, NewObservation
from astrid.cli import main
from astrid.errors import FitsError
from astrid.imaging.fits import ReadLimits, load_triplet
from astrid.imaging.synthetic import make_observation
from astrid.pipeline import RunInfo, quality_gate
from astrid.quality import QualityGate
from astrid.storage import StorageRoot

SIZE = 128


@pytest.fixture(scope="module")
def observation():
    return make_observation(5151, size=SIZE, n_transients=3, snr_range=(20.0, 40.0))


def _sip(header: fits.Header, a20: float) -> fits.Header:
    """The same WCS with a SIP distortion whose A_2_0 term is ``a20``."""
    header = header.copy()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header["A_ORDER"], header["B_ORDER"] = 2, 2
    header["A_2_0"], header["B_0_2"] = a20, a20
    return header


def _without(header: fits.Header, prefixes: tuple[str, ...]) -> fits.Header:
    header = header.copy()
    for key in [k for k in header if k.startswith(prefixes)]:
        del header[key]
    return header


def _set(header: fits.Header, **values) -> fits.Header:
    header = header.copy()
    for key, value in values.items():
        header[key] = value
    return header


BAD = {
    # astropy assumes 1°/pixel: RA/Dec tens of degrees off at the corners
    "no_scale": (lambda h: _without(h, ("CDELT", "PC", "CD")), "no pixel scale"),
    "crval_text": (lambda h: _set(h, CRVAL1="12:30:00"), "CRVAL1 = '12:30:00' is not a finite number"),
    "tiny_scale": (lambda h: _set(h, CDELT1=1e-9, CDELT2=1e-9), "outside 0.01–60″/pixel"),
    "pixscale_mismatch": (lambda h: _set(h, PIXSCALE=0.9), "disagrees with PIXSCALE = 0.9"),
    "absurd_sip": (lambda h: _sip(h, 0.05), "distortion (SIP) moves a corner"),
}


def _unparsable_crval1(path: Path) -> None:
    """Overwrite CRVAL1's value field in the file's bytes: astropy reads the card as 0."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"CRVAL1  =")
    raw[at + 10 : at + 30] = b"   12h30m00s garbage"
    path.write_bytes(bytes(raw))


def _write(directory: Path, name: str, observation, header: fits.Header) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "science": directory / f"{name}_sci.fits",
        "reference": directory / f"{name}_ref.fits",
        "difference": directory / f"{name}_diff.fits",
    }
    fits.PrimaryHDU(observation.science.astype(np.float32), header=header).writeto(paths["science"])
    fits.PrimaryHDU(observation.reference.astype(np.float32)).writeto(paths["reference"])
    fits.PrimaryHDU(observation.difference.astype(np.float32)).writeto(paths["difference"])
    return paths


def _bad_files(tmp_path: Path, observation, kind: str) -> tuple[dict[str, Path], str]:
    if kind == "crval_unparsable":
        paths = _write(tmp_path, kind, observation, observation.header)
        _unparsable_crval1(paths["science"])
        return paths, "CRVAL1 = '12h30m00s garbage' is not a finite number"
    build, reason = BAD[kind]
    return _write(tmp_path, kind, observation, build(observation.header)), reason


KINDS = [*BAD, "crval_unparsable"]


def test_the_bad_headers_would_give_wrong_coordinates(observation, tmp_path):
    """Not a strawman: without the checks, astropy turns each bad header into RA/Dec far from the
    truth (or refuses it outright), silently."""
    truth = np.asarray(observation.wcs.all_pix2world([[0.0, 0.0], [SIZE - 1.0, SIZE - 1.0]], 0))
    for kind in KINDS:
        paths, _ = _bad_files(tmp_path / kind, observation, kind)
        with fits.open(paths["science"]) as hdul:
            header = hdul[0].header
            try:
                wcs = WCS(header).celestial
                got = np.asarray(wcs.all_pix2world([[0.0, 0.0], [SIZE - 1.0, SIZE - 1.0]], 0))
            except Exception:
                continue  # astropy refused it: also fine, it is the silent ones we are after
        off_arcsec = np.max(np.abs(got - truth)) * 3600
        assert kind == "pixscale_mismatch" or off_arcsec > 5, (kind, off_arcsec)


@pytest.mark.parametrize("kind", KINDS)
def test_an_implausible_wcs_is_dropped_with_the_reason(observation, tmp_path, kind):
    paths, reason = _bad_files(tmp_path, observation, kind)
    triplet = load_triplet(paths["science"], paths["reference"], paths["difference"])
    assert triplet.wcs is None
    assert any("implausible WCS" in p and reason in p for p in triplet.problems), triplet.problems


def test_a_good_wcs_and_a_realistic_sip_are_kept(observation, tmp_path):
    good = _write(tmp_path, "good", observation, observation.header)
    assert load_triplet(good["science"], good["reference"]).wcs is not None
    # a few pixels of distortion at the corners, as real cameras have: kept, and applied
    mild = _write(tmp_path, "mild", observation, _sip(observation.header, 2e-4))
    triplet = load_triplet(mild["science"], mild["reference"])
    assert triplet.wcs is not None and triplet.wcs.sip is not None, triplet.problems


def test_the_configured_pixel_scale_range_applies(observation, tmp_path):
    good = _write(tmp_path, "good", observation, observation.header)
    narrow = ReadLimits(min_pixel_scale=0.01, max_pixel_scale=0.2)  # the frame is 0.357″/pixel
    triplet = load_triplet(good["science"], good["reference"], limits=narrow)
    assert triplet.wcs is None and "outside 0.01–0.2″/pixel" in " ".join(triplet.problems)


@pytest.fixture(scope="module")
def gate() -> QualityGate:
    return QualityGate()


def test_the_gate_rejects_each_bad_wcs_with_the_reason(observation, tmp_path, gate):
    """All bad kinds plus one good observation in one gate pass: the bad ones end ``rejected`` in
    the catalog with the WCS reason, the good one is accepted."""
    storage = StorageRoot(tmp_path.as_uri())
    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.db")
    catalog.migrate()
    reasons = {}
    new = []
    for kind in [*KINDS, "good"]:
        if kind == "good":
            paths, reasons[kind] = _write(tmp_path / "obs", kind, observation, observation.header), None
        else:
            paths, reasons[kind] = _bad_files(tmp_path / "obs", observation, kind)
        rel = {role: str(p.relative_to(tmp_path)) for role, p in paths.items()}
        new.append(NewObservation(kind, rel["science"], rel["reference"], rel["difference"]))
    catalog.register(new)
    claims = catalog.claim(len(new), "test:wcs", timedelta(minutes=5))
    accepted, rejected = quality_gate(
        claims, catalog=catalog, storage=storage, run=RunInfo(run_id="test:wcs"), max_side=8192, gate=gate
    )
    assert [c.name for c in accepted] == ["good"]
    for record in rejected:
        row = catalog.get(record["observation"])
        assert row["status"] == "rejected"
        assert "has_wcs" in row["rejection_reason"]
        assert reasons[record["observation"]] in row["rejection_reason"], row["rejection_reason"]
    assert {r["observation"] for r in rejected} == set(KINDS)


@pytest.mark.parametrize("kind", ["no_scale", "absurd_sip", "crval_unparsable"])
def test_astrid_detect_writes_empty_ra_dec_and_warns(observation, tmp_path, capsys, kind):
    paths, reason = _bad_files(tmp_path, observation, kind)
    out = tmp_path / "catalog.csv"
    args = ["detect", "--science", str(paths["science"]), "--reference", str(paths["reference"]),
            "--difference", str(paths["difference"])]  # fmt: skip
    assert main([*args, "--threshold", "0.3", "--device", "cpu", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "implausible WCS" in err and reason in err
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "the observation's bright transients should still be found"
    assert all(r["ra"] == "" and r["dec"] == "" for r in rows)


# ----------------------------------------------------------------------------- header size (item 7)


def _header_bytes(cards: list[str]) -> bytes:
    raw = b"".join(c.ljust(80).encode() for c in [*cards, "END"])
    return raw + b" " * (-len(raw) % 2880)


def _padded_header(path: Path, cards: int, *, extension: bool = False) -> Path:
    """A 64×64 float32 image whose header holds ``cards`` extra cards, written byte by byte
    (astropy takes tens of seconds to write 80 000 cards)."""
    pad = [f"PAD{i:05d}= {i:>20}" for i in range(cards)]
    axes = ["BITPIX  = -32", "NAXIS   = 2", "NAXIS1  = 64", "NAXIS2  = 64"]
    data = bytes(64 * 64 * 4) + bytes(-(64 * 64 * 4) % 2880)
    if extension:
        primary = _header_bytes(["SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 0", "EXTEND  = T", *pad])
        image = _header_bytes(["XTENSION= 'IMAGE   '", *axes, "PCOUNT  = 0", "GCOUNT  = 1"])
        path.write_bytes(primary + image + data)
    else:
        path.write_bytes(_header_bytes(["SIMPLE  = T", *axes, *pad]) + data)
    return path


@pytest.mark.parametrize("extension", [False, True])
def test_a_huge_header_is_refused_before_astropy_parses_it(tmp_path, extension):
    """80 000 cards (6.4 MB) took 6.6 s and +210 MB to parse; now a few reads and a clear error."""
    big = _padded_header(tmp_path / "big.fits", 80_000, extension=extension)
    small = _padded_header(tmp_path / "small.fits", 100)
    tracemalloc.start()
    with pytest.raises(FitsError) as err:
        load_triplet(big, small)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "big.fits has more than 10000 header cards (800000 bytes)" in str(err.value)
    assert "ASTRID_INFERENCE_MAX_HEADER_CARDS" in str(err.value)
    # a bound on what was allocated, not a timing: parsing the header would take hundreds of MB
    assert peak < 3_000_000, peak


def test_the_header_limit_is_configurable_and_counts_every_header_before_the_image(tmp_path):
    small = _padded_header(tmp_path / "small.fits", 100)
    mef = _padded_header(tmp_path / "mef.fits", 500, extension=True)  # 500 in the primary, then the image
    load_triplet(mef, small)  # well under the default
    with pytest.raises(FitsError, match="more than 400 header cards"):
        load_triplet(mef, small, limits=ReadLimits(max_header_cards=400))
    load_triplet(mef, small, limits=ReadLimits(max_header_cards=700))


def test_a_gzipped_huge_header_is_refused_too(tmp_path):
    import gzip

    big = _padded_header(tmp_path / "big.fits", 30_000)
    gz = tmp_path / "big.fits.gz"
    gz.write_bytes(gzip.compress(big.read_bytes()))
    small = _padded_header(tmp_path / "small.fits", 10)
    with pytest.raises(FitsError, match=r"big\.fits\.gz has more than 10000 header cards"):
        load_triplet(gz, small)
