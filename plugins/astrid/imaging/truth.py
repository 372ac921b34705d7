"""Injected-transient truth: what a labelled observation's ``*_truth.json`` holds, and its I/O.

Apart from the simulator so that the code that only *reads* labels (validation, training on
labelled catalog frames, the demo, evaluation) does not import the image generator, and so that
every generator (:mod:`astrid.imaging.synthetic`, :mod:`astrid.imaging.realsky`) writes the same
thing.

Definitions
-----------
:class:`InjectedTransient` positions are 0-based numpy coordinates (``x`` column, ``y`` row) of
the PSF centre, ``flux`` is the integrated flux in ADU in the science and difference images, and
``snr`` is the **optimal (PSF-fit) SNR on the difference image, source noise excluded**::

    snr = flux * sqrt( sum_i P_i**2 / V_i )

over the transient's rendered PSF stamp ``P`` (sum 1) with ``V`` the per-pixel variance of the
difference image at that place: science sky + host photon noise + read noise, plus the matched
reference's variance ``sum(K**2) * V_ref``. For a flat background it is
``flux / (sigma * sqrt(N_eff))`` with ``N_eff = 1 / sum(P**2)`` (``4 pi sigma_psf**2`` for a
Gaussian). ``snr_local`` is the same sum with the transient's own photon noise added to ``V``
(``flux * P / gain``; :func:`local_snr`): the **local SNR** an ideal matched filter reaches on a
perfect subtraction, which evaluation bins on (``astrid.ml.ideal``). It is below ``snr`` by a
few per cent at SNR 5 and by more for bright transients on faint sky. ``host`` is one of
:data:`HOSTS`.

The file is a JSON list of :meth:`InjectedTransient.to_dict` objects (a ``{"transients": [...]}``
object is read too); files written before ``snr_local`` existed read with ``snr_local=None``.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from astrid.storage import to_path

__all__ = ["HOSTS", "InjectedTransient", "local_snr", "read_truth", "write_truth"]

HOSTS = ("blank", "star", "galaxy")


@dataclass(frozen=True)
class InjectedTransient:
    """One injected transient: 0-based pixel position (x = column, y = row), integrated flux in
    ADU, optimal SNR on the difference image (see the module docstring), host kind, and
    ``snr_local``: the same optimal SNR with the transient's own photon noise included
    (:func:`local_snr`; what an ideal matched filter reaches on a perfect subtraction; ``None`` in
    truth files written before it existed)."""

    x: float
    y: float
    flux: float
    snr: float
    host: str
    snr_local: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InjectedTransient:
        host = str(d["host"])
        if host not in HOSTS:
            raise ValueError(f"transient host {host!r} is not one of {', '.join(HOSTS)}")
        local = d.get("snr_local")
        return cls(
            x=float(d["x"]),
            y=float(d["y"]),
            flux=float(d["flux"]),
            snr=float(d["snr"]),
            host=host,
            snr_local=None if local is None else float(local),
        )


def local_snr(flux: float, stamp: np.ndarray, variance: np.ndarray, gain: float) -> float:
    """Optimal (PSF-weighted) SNR of a point source of ``flux`` ADU rendered as ``stamp`` (sum 1)
    on pixels whose variance *without* the source is ``variance`` (ADU², science sky + host +
    read noise plus the PSF-matched reference's share): ``flux * sqrt(sum P**2 / sigma**2)``
    with the source's own photon noise ``flux * P / gain`` added to sigma**2."""
    v = variance + np.maximum(flux * stamp, 0.0) / gain
    return float(flux * math.sqrt(float((stamp * stamp / v).sum())))


def write_truth(truth: Iterable[InjectedTransient], path: Any) -> None:
    """Write ``truth`` to ``path`` (str, ``pathlib.Path`` or ``UPath``) as the JSON list
    :func:`read_truth` reads."""
    payload = json.dumps([t.to_dict() for t in truth], indent=1).encode()
    with to_path(path).open("wb") as f:
        f.write(payload)


def read_truth(path: Any) -> list[InjectedTransient]:
    """The transients of a ``*_truth.json`` written by :func:`write_truth` (a JSON list of
    ``{x, y, flux, snr, host[, snr_local]}``; a ``{"transients": [...]}`` object is accepted too).
    Raises ``ValueError`` for a file that is not JSON, not a list of transients, or names an
    unknown host."""
    path = to_path(path)
    with path.open("rb") as f:
        data = json.load(io.TextIOWrapper(f, encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("transients", [])
    if not isinstance(data, list):
        raise ValueError(f"{posixpath.basename(str(path))}: expected a JSON list of transients")
    return [InjectedTransient.from_dict(d) for d in data]
