"""The synthetic survey: deterministic, and its truth is where the images say it is."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrid.imaging.synthetic import (
    KNOBS,
    SyntheticObservation,
    make_observation,
    write_observation,
)
from astrid.imaging.truth import HOSTS, InjectedTransient, read_truth

SIZE = 256


def _robust_sigma(a: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(a - np.median(a))))


def _psf_at(psf: np.ndarray, x: float, y: float, shape: tuple[int, int]) -> tuple[np.ndarray, slice, slice]:
    """The PSF placed at a sub-pixel position (independent of the generator's renderer):
    Fourier-shifted, cropped to the frame."""
    r = psf.shape[0] // 2
    ix, iy = round(x), round(y)
    fx, fy = x - ix, y - iy
    ky = np.fft.fftfreq(psf.shape[0])[:, None]
    kx = np.fft.fftfreq(psf.shape[1])[None, :]
    shifted = np.fft.ifft2(
        np.fft.fft2(np.fft.ifftshift(psf)) * np.exp(-2j * np.pi * (kx * fx + ky * fy))
    ).real
    shifted = np.fft.fftshift(shifted)
    r0, c0 = iy - r, ix - r
    rows = slice(max(r0, 0), min(r0 + psf.shape[0], shape[0]))
    cols = slice(max(c0, 0), min(c0 + psf.shape[1], shape[1]))
    return shifted[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0], rows, cols


def _measure_snr(obs: SyntheticObservation, t: InjectedTransient) -> float:
    """Optimal PSF-fit SNR measured on the difference: local background from an annulus, noise
    from a robust sigma of the surrounding difference image, fit within 1.5 FWHM."""
    fwhm = obs.header["FWHM"]
    p, rows, cols = _psf_at(obs.psf.astype(float), t.x, t.y, obs.difference.shape)
    cut = obs.difference[rows, cols].astype(float)
    yy, xx = np.mgrid[rows, cols]
    rr = np.hypot(yy - t.y, xx - t.x)
    cut = cut - np.median(cut[(rr > 3 * fwhm) & (rr < 5 * fwhm)])
    p = np.where(rr <= 1.5 * fwhm, p, 0.0)
    flux_fit = (p * cut).sum() / (p * p).sum()
    r, c = round(t.y), round(t.x)
    box = obs.difference[max(0, r - 40) : r + 40, max(0, c - 40) : c + 40]
    return flux_fit * math.sqrt((p * p).sum()) / _robust_sigma(box)


def _peak_offset(obs: SyntheticObservation, t: InjectedTransient) -> float:
    """Distance from the truth to the sub-pixel peak of the PSF-matched-filtered difference."""
    from scipy.signal import fftconvolve

    filtered = fftconvolve(obs.difference.astype(float), obs.psf[::-1, ::-1].astype(float), mode="same")
    r, c = round(t.y), round(t.x)
    win = filtered[r - 2 : r + 3, c - 2 : c + 3]
    pr, pc = np.unravel_index(int(np.argmax(win)), win.shape)
    pr, pc = pr + r - 2, pc + c - 2
    z = filtered[pr - 1 : pr + 2, pc - 1 : pc + 2]
    dy = 0.5 * (z[0, 1] - z[2, 1]) / (z[0, 1] - 2 * z[1, 1] + z[2, 1])
    dx = 0.5 * (z[1, 0] - z[1, 2]) / (z[1, 0] - 2 * z[1, 1] + z[1, 2])
    return math.hypot(pc + np.clip(dx, -0.5, 0.5) - t.x, pr + np.clip(dy, -0.5, 0.5) - t.y)


@pytest.fixture(scope="module")
def obs() -> SyntheticObservation:
    return make_observation(7, SIZE)


@pytest.fixture(scope="module")
def blank_field() -> list[SyntheticObservation]:
    """Several frames full of blank-sky transients: the statistics of truth vs. images."""
    return [
        make_observation(
            seed, 384, n_transients=40, host_fractions=(1, 0, 0), crowded=False, satellite_trails=0
        )
        for seed in (11, 12, 13)
    ]


@pytest.fixture(scope="module")
def hosted_field() -> list[SyntheticObservation]:
    return [
        make_observation(seed, 384, n_transients=30, host_fractions=(0, 1, 1), crowded=False)
        for seed in (21, 22)
    ]


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_observation(obs: SyntheticObservation) -> None:
    again = make_observation(7, SIZE)
    for name in ("science", "reference", "difference", "psf"):
        np.testing.assert_array_equal(getattr(obs, name), getattr(again, name))
    assert obs.truth == again.truth
    assert obs.header.tostring() == again.header.tostring()


def test_different_seed_gives_different_observation(obs: SyntheticObservation) -> None:
    other = make_observation(8, SIZE)
    assert not np.array_equal(obs.science, other.science)
    assert not np.array_equal(obs.difference, other.difference)
    assert [(t.x, t.y) for t in obs.truth] != [(t.x, t.y) for t in other.truth]


def test_images_are_float32_and_same_shape(obs: SyntheticObservation) -> None:
    for img in (obs.science, obs.reference, obs.difference):
        assert img.dtype == np.float32
        assert img.shape == (SIZE, SIZE)
        assert np.isfinite(img).all()


def test_overriding_one_knob_leaves_the_others(obs: SyntheticObservation) -> None:
    no_cr = make_observation(7, SIZE, cosmic_ray_rate=0)
    many_cr = make_observation(7, SIZE, cosmic_ray_rate=400)
    for name, value in no_cr.params.items():
        if name not in ("cosmic_ray_rate", "n_cosmic_rays"):
            assert many_cr.params[name] == value, name
    # cosmic rays are on the science only: the reference is untouched
    np.testing.assert_array_equal(no_cr.reference, many_cr.reference)
    assert many_cr.params["n_cosmic_rays"] > 10
    extra = many_cr.science - no_cr.science
    sigma = no_cr.params["sky_sigma"]
    assert (extra > 5 * sigma).sum() >= many_cr.params["n_cosmic_rays"] // 2
    # ... and they are sharp: a cosmic-ray pixel stands out from its 8 neighbours' mean
    hit = np.unravel_index(int(np.argmax(extra)), extra.shape)
    r, c = (int(v) for v in hit)
    neighbours = extra[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2]
    assert extra[r, c] > 1.5 * (neighbours.sum() - extra[r, c]) / (neighbours.size - 1)


def test_unknown_or_invalid_knobs_are_refused() -> None:
    with pytest.raises(TypeError, match="snr_rnage"):
        make_observation(1, SIZE, snr_rnage=(3, 5))
    with pytest.raises(ValueError, match="snr_range"):
        make_observation(1, SIZE, snr_range=(10, 3))
    with pytest.raises(ValueError, match="reference_fwhm"):
        make_observation(1, SIZE, seeing_fwhm=2.0, reference_fwhm=3.0)
    with pytest.raises(ValueError, match="seed"):
        make_observation(-1, SIZE)
    with pytest.raises(ValueError, match="size"):
        make_observation(1, 16)
    assert set(KNOBS) >= {
        "n_transients",
        "snr_range",
        "seeing_fwhm",
        "psf_beta",
        "misregistration",
        "crowded",
    }


# -- truth -------------------------------------------------------------------------------


def test_truth_is_well_formed(obs: SyntheticObservation) -> None:
    assert len(obs.truth) >= 3
    xy = np.array([(t.x, t.y) for t in obs.truth])
    assert xy.min() >= 8 and xy.max() <= SIZE - 1 - 8
    for t in obs.truth:
        assert t.host in HOSTS
        assert t.flux > 0
        assert 3.0 <= t.snr <= 50.0
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    assert d[np.triu_indices(len(xy), 1)].min() >= 12
    with pytest.raises(AttributeError):
        obs.truth[0].x = 1.0  # type: ignore[misc]


def test_snr_distribution_spans_3_to_50_with_many_near_threshold() -> None:
    snrs = np.array([t.snr for seed in range(3) for t in make_observation(seed, 512, n_transients=60).truth])
    assert snrs.min() < 4.0 and snrs.max() > 30.0
    assert ((snrs >= 4.5) & (snrs <= 10)).mean() > 0.5
    hosts = {t.host for seed in range(3) for t in make_observation(seed, 256, n_transients=12).truth}
    assert hosts == set(HOSTS)


def test_difference_has_a_peak_at_each_transient(blank_field: list[SyntheticObservation]) -> None:
    offsets = {"bright": [], "faint": []}
    for o in blank_field:
        for t in o.truth:
            if t.snr >= 10:
                offsets["bright"].append(_peak_offset(o, t))
            elif t.snr >= 5:
                offsets["faint"].append(_peak_offset(o, t))
    assert len(offsets["bright"]) >= 10 and len(offsets["faint"]) >= 20
    assert np.mean(np.array(offsets["bright"]) <= 1.0) >= 0.9
    assert np.mean(np.array(offsets["faint"]) <= 1.0) >= 0.75


def test_recorded_snr_matches_the_difference_image(blank_field: list[SyntheticObservation]) -> None:
    measured, recorded = [], []
    for o in blank_field:
        for t in o.truth:
            measured.append(_measure_snr(o, t))
            recorded.append(t.snr)
    measured, recorded = np.array(measured), np.array(recorded)
    residual = measured - recorded
    # unit-variance scatter around the truth (noise), no bias; a few outliers (a cosmic ray or
    # a neighbour's residual on top) are fine
    assert abs(np.median(residual)) < 0.6
    assert 0.6 < _robust_sigma(residual) < 1.6
    assert np.mean(np.abs(residual) < 3 + 0.15 * recorded) > 0.9
    # a wrong definition (e.g. per-pixel peak SNR) would be off by a factor of several
    assert 0.85 < np.median(measured / recorded) < 1.15


def test_hosted_transients_sit_on_reference_flux(hosted_field: list[SyntheticObservation]) -> None:
    elevated = {"star": [], "galaxy": []}
    for o in hosted_field:
        sigma_ref = o.params["reference_sigma"]
        for t in o.truth:
            r, c = round(t.y), round(t.x)
            local = o.reference[max(0, r - 30) : r + 31, max(0, c - 30) : c + 31]
            excess = float(o.reference[r - 1 : r + 2, c - 1 : c + 2].mean() - np.median(local))
            elevated[t.host].append(excess / sigma_ref)
    for host in ("star", "galaxy"):
        values = np.array(elevated[host])
        assert len(values) >= 5, host
        assert np.mean(values > 3) >= 0.9, (host, values)


def test_blank_transients_sit_on_empty_sky(blank_field: list[SyntheticObservation]) -> None:
    values = []
    for o in blank_field:
        sigma_ref = o.params["reference_sigma"]
        for t in o.truth:
            r, c = round(t.y), round(t.x)
            local = o.reference[max(0, r - 30) : r + 31, max(0, c - 30) : c + 31]
            values.append((o.reference[r - 1 : r + 2, c - 1 : c + 2].mean() - np.median(local)) / sigma_ref)
    assert np.median(values) < 1.0


# -- realism -------------------------------------------------------------------------------


def test_reference_is_deeper_and_sharper(obs: SyntheticObservation) -> None:
    assert obs.params["reference_fwhm"] < obs.params["seeing_fwhm"]
    sky_sci = _robust_sigma(obs.science - np.median(obs.science))
    sky_ref = _robust_sigma(obs.reference - np.median(obs.reference))
    assert sky_ref < 0.7 * sky_sci
    # the difference is background-subtracted with the advertised noise
    assert abs(float(np.median(obs.difference))) < 0.2 * obs.params["diff_sigma"]
    assert 0.8 < _robust_sigma(obs.difference) / obs.params["diff_sigma"] < 1.3


def test_saturated_stars_clip_and_bleed() -> None:
    o = make_observation(3, 384, saturate=8000.0, star_density=4000, sky_level=300.0)
    sat = o.header["SATURATE"]
    assert o.science.max() == pytest.approx(sat)
    clipped = o.science >= sat
    assert clipped.sum() > 20
    # bleed trails: runs of saturated pixels along columns, taller than wide
    from scipy import ndimage

    labels, _n = ndimage.label(clipped)
    tall = [
        s for s in ndimage.find_objects(labels) if (s[0].stop - s[0].start) > 1.5 * (s[1].stop - s[1].start)
    ]
    assert tall, "no bleed trail found"
    for t in o.truth:  # no transient on a saturated region
        r, c = round(t.y), round(t.x)
        assert not clipped[max(0, r - 3) : r + 4, max(0, c - 3) : c + 4].any()


def test_misregistration_leaves_dipoles_at_bright_stars() -> None:
    kw = dict(
        n_transients=0,
        star_density=3000,
        saturate=1e7,
        psf_mismatch=0.0,
        flux_scale_error=0.0,
        cosmic_ray_rate=0,
        hot_pixel_rate=0,
        n_bad_columns=0,
        satellite_trails=0,
        fader_rate=0,
    )
    aligned = make_observation(5, 256, misregistration=0.0, **kw)
    shifted = make_observation(5, 256, misregistration=0.4, **kw)
    np.testing.assert_array_equal(aligned.science, shifted.science)
    r, c = np.unravel_index(int(np.argmax(aligned.reference[20:-20, 20:-20])), (216, 216))
    r, c = r + 20, c + 20
    sigma = aligned.params["diff_sigma"]
    around_aligned = aligned.difference[r - 6 : r + 7, c - 6 : c + 7]
    around_shifted = shifted.difference[r - 6 : r + 7, c - 6 : c + 7]
    # a dipole: strong positive and negative lobes, an order above the aligned subtraction's
    assert around_shifted.max() > 10 * sigma and around_shifted.min() < -10 * sigma
    assert np.abs(around_shifted).max() > 4 * np.abs(around_aligned).max()


def test_header_and_wcs_are_complete(obs: SyntheticObservation) -> None:
    h = obs.header
    for key in (
        "MJD-OBS",
        "DATE-OBS",
        "EXPTIME",
        "FILTER",
        "GAIN",
        "RDNOISE",
        "SATURATE",
        "FWHM",
        "PIXSCALE",
        "OBJECT",
        "SEEING",
        "SKYLEVEL",
        "MAGZPT",
    ):
        assert key in h, key
    assert "pix" in h.comments["FWHM"]
    assert h["FWHM"] == pytest.approx(obs.params["seeing_fwhm"], abs=1e-3)
    assert h["SEEING"] == pytest.approx(h["FWHM"] * h["PIXSCALE"], rel=1e-3)
    w = WCS(h)
    assert w.has_celestial and list(w.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    pix = np.array([[0.0, 0.0], [SIZE - 1.0, SIZE - 1.0], [100.5, 30.25]])
    np.testing.assert_allclose(w.all_pix2world(pix, 0), obs.wcs.all_pix2world(pix, 0), atol=1e-9)
    from astropy.wcs.utils import proj_plane_pixel_scales

    assert proj_plane_pixel_scales(w) * 3600 == pytest.approx([h["PIXSCALE"]] * 2, rel=1e-4)
    assert obs.psf is not None and obs.psf.sum() == pytest.approx(1.0, rel=1e-5)


# -- I/O -----------------------------------------------------------------------------------


def test_write_observation_and_read_truth_round_trip(obs: SyntheticObservation, tmp_path) -> None:
    uris = write_observation(obs, tmp_path / "night1", "obs007")
    assert set(uris) == {"science_uri", "reference_uri", "difference_uri", "truth_uri"}
    assert uris["science_uri"].endswith("obs007_sci.fits")
    assert uris["truth_uri"] == str(tmp_path / "night1" / "obs007_truth.json")
    for key, array in (
        ("science_uri", obs.science),
        ("reference_uri", obs.reference),
        ("difference_uri", obs.difference),
    ):
        with fits.open(uris[key]) as hdul:
            np.testing.assert_array_equal(hdul[0].data, array)
            assert hdul[0].header["FWHM"] > 0
            assert WCS(hdul[0].header).has_celestial
    with fits.open(uris["reference_uri"]) as hdul:
        assert hdul[0].header["FWHM"] == pytest.approx(obs.params["reference_fwhm"], abs=1e-3)
    assert read_truth(uris["truth_uri"]) == obs.truth
    assert read_truth(str(uris["truth_uri"])) == obs.truth
    data = json.loads((tmp_path / "night1" / "obs007_truth.json").read_text())
    assert isinstance(data, list) and set(data[0]) == {"x", "y", "flux", "snr", "host", "snr_local"}
    # truth files written before snr_local existed still read (as None)
    old = [{k: v for k, v in d.items() if k != "snr_local"} for d in data]
    (tmp_path / "old_truth.json").write_text(json.dumps(old))
    assert [t.snr_local for t in read_truth(tmp_path / "old_truth.json")] == [None] * len(old)


def test_local_snr_adds_the_transients_own_photon_noise(obs: SyntheticObservation) -> None:
    gain = obs.params["gain"]
    for t in obs.truth:
        # the transient's photon noise can only lower the SNR, and by the amount its flux
        # per pixel adds to the variance: at most flux/gain over the whole stamp
        assert t.snr_local < t.snr
        bound = t.snr / np.sqrt(1.0 + t.flux * float(obs.psf.max()) / gain / obs.params["sky_sigma"] ** 2)
        assert t.snr_local >= 0.9 * bound
    # a faint transient loses little, a bright one on faint sky more
    by_snr = sorted(obs.truth, key=lambda t: t.snr)
    assert by_snr[0].snr_local / by_snr[0].snr > by_snr[-1].snr_local / by_snr[-1].snr - 1e-6


def test_write_observation_refuses_paths_as_names(obs: SyntheticObservation, tmp_path) -> None:
    with pytest.raises(ValueError, match="name"):
        write_observation(obs, tmp_path, "../escape")


def test_realism_options_are_off_by_default_and_change_only_their_part() -> None:
    base = make_observation(77, size=256)
    same = make_observation(
        77,
        size=256,
        host_profile="sersic",
        diffraction_spikes=False,
        nebulosity=0.0,
        host_flux_range=(60, 600),
    )
    np.testing.assert_array_equal(base.difference, same.difference)
    assert base.truth == same.truth
    # nebulosity: the same structure in science and reference (it subtracts), nothing else moves
    neb = make_observation(77, size=256, nebulosity=5.0)
    added_s = neb.science.astype(np.float64) - base.science
    added_r = neb.reference.astype(np.float64) - base.reference
    assert added_s.max() > 2.0 * base.params["sky_sigma"]
    assert np.corrcoef(added_s.ravel(), added_r.ravel())[0, 1] > 0.5
    # (blank-sky transients move off the nebulosity: blank means below 0.5σ of scene light)
    # spikes: extra light only on bright stars' arms, in both images
    spk = make_observation(78, size=512, diffraction_spikes=True, saturate=3000.0, star_density=6000)
    ref = make_observation(78, size=512, saturate=3000.0, star_density=6000)
    assert np.abs(spk.reference - ref.reference).max() > 0
    changed = np.abs(spk.science.astype(np.float64) - ref.science) > 1e-3
    assert 0 < changed.mean() < 0.2


def test_bulge_disc_hosts_put_transients_on_the_light() -> None:
    obs = [
        make_observation(
            s, size=384, host_profile="bulge_disc", host_fractions=(0, 0, 1), crowded=False, n_transients=8
        )
        for s in (80, 81)
    ]
    hosted = [(o, t) for o in obs for t in o.truth]
    assert len(hosted) >= 8 and all(t.host == "galaxy" for _, t in hosted)
    # every transient sits on its host's light: the noiseless reference there is well above the sky noise
    above = [
        float(np.median(o.reference[round(t.y) - 1 : round(t.y) + 2, round(t.x) - 1 : round(t.x) + 2]))
        - float(np.median(o.reference))
        > 2 * o.params["reference_sigma"]
        for o, t in hosted
    ]
    assert np.mean(above) >= 0.8
    with pytest.raises(ValueError, match="host_profile"):
        make_observation(1, size=128, host_profile="spiral")
