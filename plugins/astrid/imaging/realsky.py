"""A held-out family on a *real* sky: the Hubble Deep Field image bundled with scikit-image,
observed through our simulated telescope, with injected transients.

Never used for training or calibration (``astrid.ml.train`` knows nothing of it); ``astrid
evaluate --real-sky N`` reports it separately. Only one real image ships with the installed
packages (``skimage.data.hubble_deep_field``: 872×1000 px, 8-bit JPEG colour composite, no
download), so the frames differ by crop, orientation, brightness scale, PSF, sky and noise, not by
the sky itself — the family measures how the detector does on real galaxy shapes, clustering and
backgrounds, not on a large sample of them.

How a frame is made (``make_real_sky_observation(seed)``):

* **Scene**: the image's luminance, minus its sky (median) plus 2.5σ of the JPEG's sky noise
  and clipped at 0, is the intrinsic (pre-PSF) scene: the real galaxies, without the JPEG's own
  noise (which would otherwise appear as thousands of faint sources). A random ``size``² crop, one of the 8 dihedral
  orientations, scaled so that its 99.9th-percentile pixel (after the PSF) is 30–300 σ of sky.
* **Telescope**: as :mod:`astrid.imaging.synthetic` — science and a deeper (2–4×), sharper
  reference PSF (Moffat), each with its own sky, Poisson + read noise, a sub-pixel
  misregistration, and a difference ``(science - bkg) - K ⊗ (reference - bkg)`` with the
  matching kernel fitted to a slightly wrong science PSF (0–4 %). No cosmic rays, hot pixels or
  saturation: this family isolates real hosts.
* **Transients**: about 100 per Mpix, ≥ ``max(12, 4 FWHM)`` px apart; 60 % placed *following
  the light* (drawn with probability ∝ the PSF-convolved scene where it is above 3σ of sky, so
  many sit on galaxy cores; truth host ``galaxy``), 40 % uniformly (truth host ``blank`` when
  the scene there is below 0.5σ, else ``galaxy``). SNR targets as in the synthetic generator
  (60 % uniform 4.5–10, 40 % log-uniform 3–50); truth records ``snr`` and ``snr_local``
  computed exactly as there.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.signal import fftconvolve

from astrid.imaging.synthetic import (
    SyntheticObservation,
    difference_image,
    difference_sigma,
    inject_point,
    make_wcs,
    matching_kernel,
    moffat_stamp,
    observe,
    pixel_variances,
)
from astrid.imaging.truth import InjectedTransient

__all__ = ["make_real_sky_observation", "real_sky_scene"]

REAL_SKY_SEED_OFFSET = 7_000_000  # seeds of this family, recorded in the header (SYNSEED)


@functools.lru_cache(maxsize=1)
def real_sky_scene() -> np.ndarray:
    """The Hubble Deep Field luminance (float32, sky-subtracted, ≥ 0), from scikit-image's
    bundled data (raises ImportError if scikit-image is not installed)."""
    from skimage import data

    rgb = np.asarray(data.hubble_deep_field(), dtype=np.float32)
    lum = 0.2125 * rgb[..., 0] + 0.7154 * rgb[..., 1] + 0.0721 * rgb[..., 2]
    # the JPEG's sky and its noise (σ from the interquartile range) are not part of the scene
    q25, q50, q75 = np.percentile(lum, [25, 50, 75])
    return np.clip(lum - (q50 + 2.5 * (q75 - q25) / 1.349), 0.0, None).astype(np.float32)


def make_real_sky_observation(seed: int, size: int = 512) -> SyntheticObservation:
    """One observation of a crop of the real sky (see the module docstring)."""
    scene0 = real_sky_scene()
    if not 64 <= size <= min(scene0.shape):
        raise ValueError(f"size must be between 64 and {min(scene0.shape)} px, got {size}")
    rng = np.random.default_rng([int(seed), 0x5EA1])
    fwhm_s = float(rng.uniform(2.0, 4.5))
    fwhm_r = max(1.6, fwhm_s * float(rng.uniform(0.6, 0.9)))
    beta_s, beta_r = float(rng.uniform(2.5, 4.5)), float(rng.uniform(2.5, 4.5))
    ell_s, ang_s = float(rng.uniform(0, 0.12)), float(rng.uniform(0, np.pi))
    ell_r, ang_r = float(rng.uniform(0, 0.08)), float(rng.uniform(0, np.pi))
    sky, gain = float(np.exp(rng.uniform(np.log(100), np.log(3000)))), float(rng.uniform(0.8, 3.0))
    rn, depth = float(rng.uniform(3.0, 12.0)), float(rng.uniform(2.0, 4.0))
    ref_sky = sky * float(rng.uniform(0.5, 1.5))
    mis = float(rng.uniform(0.0, 0.3))
    mism = float(rng.uniform(0.0, 0.04))
    r0 = int(rng.integers(0, scene0.shape[0] - size + 1))
    c0 = int(rng.integers(0, scene0.shape[1] - size + 1))
    crop = scene0[r0 : r0 + size, c0 : c0 + size]
    crop = np.rot90(crop, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.ascontiguousarray(crop, dtype=np.float32)

    radius = math.ceil(max(4.5 * fwhm_s, 10.0))
    ang = rng.uniform(0, 2 * np.pi)
    shift = (mis * math.cos(ang), mis * math.sin(ang))
    psf_s = moffat_stamp(radius, fwhm_s, beta_s, ell_s, ang_s)
    psf_r0 = moffat_stamp(radius, fwhm_r, beta_r, ell_r, ang_r)
    psf_r = moffat_stamp(radius, fwhm_r, beta_r, ell_r, ang_r, *shift)
    e = rng.normal(size=2)
    psf_model = moffat_stamp(
        radius,
        fwhm_s * (1 + mism * e[0]),
        float(np.clip(beta_s * (1 + 2 * mism * e[1]), 1.6, 10)),
        ell_s,
        ang_s,
    )
    kernel = matching_kernel(psf_model, psf_r0)
    kernel_power = float((kernel**2).sum())
    sky_sigma = math.sqrt(sky / gain + (rn / gain) ** 2)

    conv_s = fftconvolve(crop, psf_s.astype(np.float32), mode="same")
    scale = float(rng.uniform(30, 300)) * sky_sigma / max(float(np.percentile(conv_s, 99.9)), 1e-6)
    scene_s = np.maximum(conv_s * scale, 0.0)
    scene_r = np.maximum(fftconvolve(crop, psf_r.astype(np.float32), mode="same") * scale, 0.0)
    model_s = (sky + scene_s).astype(np.float64)
    model_r = (ref_sky + scene_r).astype(np.float64)
    var_s, var_r = pixel_variances(model_s, model_r, gain, rn, depth)

    # transients
    margin, spacing = 12, max(12.0, 4.0 * fwhm_s)
    n_tr = max(3, round(100 * size * size / 1e6))
    light = np.where(scene_s > 3 * sky_sigma, scene_s, 0.0)
    light[:margin], light[-margin:], light[:, :margin], light[:, -margin:] = 0, 0, 0, 0
    cdf = np.cumsum(light.ravel())
    truth: list[InjectedTransient] = []
    placed: list[tuple[float, float]] = []
    for _ in range(n_tr):
        on_light = rng.random() < 0.6 and cdf[-1] > 0
        for _try in range(100):
            if on_light:
                idx = int(np.searchsorted(cdf, rng.uniform(0, cdf[-1])))
                y, x = divmod(idx, size)
                x, y = x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)
            else:
                x, y = rng.uniform(margin, size - 1 - margin, 2)
            if all((x - px) ** 2 + (y - py) ** 2 >= spacing**2 for px, py in placed):
                break
        else:
            continue
        placed.append((x, y))
        target = (
            rng.uniform(4.5, 10.0) if rng.random() < 0.6 else math.exp(rng.uniform(math.log(3), math.log(50)))
        )
        host = "galaxy" if scene_s[round(y), round(x)] >= 0.5 * sky_sigma else "blank"
        truth.append(inject_point(model_s, psf_s, x, y, target, host, var_s, var_r, kernel_power, gain))

    # the telescope's noise and the subtraction exactly as the synthetic survey's
    science, reference = observe(model_s, model_r, var_r, gain, rn, rng)
    difference = difference_image(science, reference, kernel)
    diff_sigma = difference_sigma(sky_sigma, kernel_power, ref_sky, gain, rn, depth)

    wcs = make_wcs(size, float(rng.uniform(0, 360)), float(rng.uniform(-60, 60)), 0.4, 0.0)
    header = wcs.to_header()
    for key, value in (
        ("OBJECT", f"REALSKY-{seed:06d}"),
        ("IMAGETYP", "SCIENCE"),
        ("GAIN", round(gain, 5)),
        ("RDNOISE", round(rn, 4)),
        ("SATURATE", 1e9),
        ("FWHM", round(fwhm_s, 4)),
        ("SKYLEVEL", round(sky, 3)),
        ("SKYSIG", round(sky_sigma, 4)),
        ("DIFFSIG", round(diff_sigma, 4)),
        ("SYNSEED", int(seed) + REAL_SKY_SEED_OFFSET),
    ):
        header[key] = value
    params = {
        "family": "real-sky (skimage hubble_deep_field)",
        "seed": int(seed) + REAL_SKY_SEED_OFFSET,
        "size": size,
        "seeing_fwhm": fwhm_s,
        "reference_fwhm": fwhm_r,
        "sky_level": sky,
        "gain": gain,
        "read_noise": rn,
        "reference_depth": depth,
        "sky_sigma": sky_sigma,
        "diff_sigma": diff_sigma,
        "reference_sky": ref_sky,
        "reference_sigma": math.sqrt(ref_sky / gain + (rn / gain) ** 2) / depth,
        "kernel_power": kernel_power,
        "crop": [r0, c0],
        "crowded": False,
    }
    return SyntheticObservation(
        science=science,
        reference=reference,
        difference=difference,
        header=header,
        truth=truth,
        wcs=wcs,
        psf=psf_s.astype(np.float32),
        params=params,
        reference_psf=psf_r0.astype(np.float32),
    )
