"""FITS + WCS I/O: :func:`load_triplet` reads a science/reference(/difference) triplet with bounded,
checked reads; :func:`write_image` writes one float32 image.

Paths are anything with ``.open("rb")`` (``pathlib.Path``, ``upath.UPath`` incl. ``s3://``,
Airflow's ``ObjectStoragePath``) or a ``str`` (a local path, or a URI with a scheme). Reads are
bounded: the file size is checked against ``max_side`` *before* anything is read, and
``NAXIS1``/``NAXIS2`` from the header *before* the pixels are loaded, so a huge or hostile file
costs a ``stat`` and a header, never the worker's memory.

Headers are bounded too: before astropy parses anything, the raw header blocks up to the image
are walked and their cards counted (:attr:`ReadLimits.max_header_cards`), so a file padded with
80 000 cards costs a few reads, not seconds and hundreds of MB.

Every failure is a :class:`~astrid.errors.FitsError` whose message names the file, the problem and
the fix: missing, empty/truncated, not FITS, a header over the card limit, no 2-D image HDU, frame
larger than ``max_side``, shapes that differ within the triplet, or NaN/inf-dominated pixels
(finite fraction < 0.5). Softer problems do not fail the observation; they are listed in
:attr:`Triplet.problems`: non-finite pixels (replaced by the image median) and a missing, broken
or implausible WCS (``wcs=None``, see :mod:`astrid.imaging.wcs`): never RA/Dec from a WCS that
cannot be trusted.
"""

from __future__ import annotations

import gzip
import io
import math
import posixpath
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from astrid.errors import FitsError
from astrid.imaging.wcs import wcs_problem
from astrid.storage import to_path

__all__ = [
    "MIN_FINITE_FRACTION",
    "ReadLimits",
    "Triplet",
    "celestial_wcs",
    "file_stem",
    "load_triplet",
    "max_file_bytes",
    "read_image",
    "write_image",
]

MIN_FINITE_FRACTION = 0.5
_BLOCK = 2880
# Structural keywords not copied from a primary header into an extension's header.
_STRUCTURAL = {
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "XTENSION",
    "EXTNAME",
    "EXTVER",
    "BSCALE",
    "BZERO",
    "BLANK",
    "COMMENT",
    "HISTORY",
    "",
    "CHECKSUM",
    "DATASUM",
}


@dataclass(frozen=True)
class ReadLimits:
    """What a read accepts. Defaults are the configuration's (``ASTRID_INFERENCE_MAX_IMAGE_SIDE``,
    ``…_MAX_HEADER_CARDS``, ``…_MIN_PIXEL_SCALE``, ``…_MAX_PIXEL_SCALE``)."""

    max_side: int = 8192
    max_header_cards: int = 10_000
    min_pixel_scale: float = 0.01  # arcsec/pixel
    max_pixel_scale: float = 60.0

    @classmethod
    def from_config(cls, config: Any) -> ReadLimits:
        return cls(max_side=config.max_image_side, **config.fits_limits)


@dataclass
class Triplet:
    """One observation's images, float32 and the same shape; ``header`` is the science header,
    ``wcs`` its celestial WCS (``None`` when missing or broken: see ``problems``). ``difference``
    is ``None`` when only science and reference were read (:func:`load_triplet`)."""

    science: np.ndarray
    reference: np.ndarray
    difference: np.ndarray | None
    header: fits.Header
    wcs: WCS | None
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.science.shape  # type: ignore[return-value]


def max_file_bytes(max_side: int) -> int:
    """Largest file accepted for frames of at most ``max_side``² pixels: room for 16 bytes a pixel
    (a float64 image plus a same-size mask/variance plane, or several 32-bit planes) plus 1 MiB of
    headers."""
    return 16 * max_side * max_side + (1 << 20)


def _label(path: Any) -> str:
    return str(path)


def file_stem(path: Any) -> str:
    """A FITS file's name without its directory and its FITS and compression suffixes: the default
    observation name, the same whether the path is local or s3://."""
    base = posixpath.basename(str(path).rstrip("/"))
    for suffix in (".gz", ".fz", ".bz2"):
        base = base.removesuffix(suffix)
    for suffix in (".fits", ".fit", ".fts"):
        base = base.removesuffix(suffix)
    for suffix in ("_sci", "_science", "-sci"):
        base = base.removesuffix(suffix)
    return base or "observation"


def _image_shape(header: fits.Header) -> tuple[int, ...]:
    naxis = int(header.get("NAXIS", 0))
    return tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))  # numpy order


def _read_image(
    path: Any, role: str, limits: ReadLimits, problems: list[str]
) -> tuple[np.ndarray, fits.Header]:
    max_side = limits.max_side
    label = _label(path)
    what = f"{role} file {label}"
    try:
        size = int(path.stat().st_size)
    except FileNotFoundError:
        raise FitsError(
            f"{what} does not exist: check the URI in the catalog and that the file was written"
        ) from None
    except (OSError, ValueError) as exc:
        raise FitsError(
            f"{what} cannot be read ({exc}): check the path and the storage credentials"
        ) from None
    if size == 0:
        raise FitsError(
            f"{what} is empty (0 bytes): the upload or copy was interrupted; re-copy or re-ingest it"
        )
    limit = max_file_bytes(max_side)
    if size > limit:
        raise FitsError(
            f"{what} is {size} bytes, more than a {max_side}×{max_side} frame can need ({limit} bytes): "
            f"cut it into smaller frames or raise ASTRID_INFERENCE_MAX_IMAGE_SIDE"
        )
    try:
        with path.open("rb") as f:
            return _parse(f, what, size, limits, problems)
    except FitsError:
        raise
    except FileNotFoundError:
        raise FitsError(
            f"{what} does not exist: check the URI in the catalog and that the file was written"
        ) from None
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise FitsError(f"{what} is truncated or corrupt ({exc}): re-copy or re-ingest the file") from None


def _parse(
    f: Any, what: str, size: int, limits: ReadLimits, problems: list[str]
) -> tuple[np.ndarray, fits.Header]:
    max_side = limits.max_side
    magic = f.read(_BLOCK)
    gzipped = magic[:2] == b"\x1f\x8b"
    if not gzipped:
        if not magic.startswith(b"SIMPLE  ="):
            start = magic[:16].decode("ascii", "replace")
            raise FitsError(
                f"{what} is not a FITS file (it starts with {start!r}, not 'SIMPLE  ='): point the catalog at the .fits file"
            )
        if size < _BLOCK:
            raise FitsError(
                f"{what} is truncated: {size} bytes, less than one 2880-byte FITS header block; re-copy it"
            )
    f.seek(0)
    _check_header_size(f, what, gzipped, limits)
    f.seek(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fits.open(
            f, memmap=False, lazy_load_hdus=True, ignore_missing_simple=False, cache=False
        ) as hdul:
            found: list[str] = []
            index = None
            for i, hdu in enumerate(hdul):
                shape = (
                    _image_shape(hdu.header)
                    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
                    else ()
                )
                found.append(f"{type(hdu).__name__}{list(shape) if shape else ''}")
                if len([n for n in shape if n > 1]) == 2 and all(n >= 1 for n in shape):
                    index = i
                    break
            if index is None:
                raise FitsError(
                    f"{what} has no 2-D image HDU (found: {', '.join(found) or 'nothing'}): write the image "
                    f"into the primary HDU or an IMAGE extension"
                )
            hdu = hdul[index]
            shape2 = tuple(n for n in _image_shape(hdu.header) if n > 1)
            if max(shape2) > max_side:
                raise FitsError(
                    f"{what} is {shape2[1]}×{shape2[0]} pixels, larger than max_side={max_side}: cut it into "
                    f"smaller frames or raise ASTRID_INFERENCE_MAX_IMAGE_SIDE"
                )
            if not gzipped and not isinstance(hdu, fits.CompImageHDU):
                bitpix = abs(int(hdu.header.get("BITPIX", 8)))
                need = hdul.fileinfo(index)["datLoc"] + bitpix // 8 * math.prod(_image_shape(hdu.header))
                if need > size:
                    raise FitsError(
                        f"{what} is truncated: {size} bytes, but its header promises {need} bytes; re-copy or re-ingest it"
                    )
            header = hdu.header.copy()
            if index > 0:
                for card in hdul[0].header.cards:
                    if (
                        card.keyword not in _STRUCTURAL
                        and not card.keyword.startswith("NAXIS")
                        and card.keyword not in header
                    ):
                        header.append(card)
            raw = hdu.data
            if raw is None:
                raise FitsError(f"{what} has an image header but no pixels: re-ingest the file")
            data = np.array(raw, dtype=np.float32).reshape(shape2)
    for w in caught:
        if "truncat" in str(w.message).lower():
            raise FitsError(f"{what} is truncated ({w.message}): re-copy or re-ingest the file")
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad:
        fraction = 1.0 - n_bad / data.size
        if fraction < MIN_FINITE_FRACTION:
            raise FitsError(
                f"{what} is mostly NaN/inf ({fraction:.1%} finite pixels, need ≥ {MIN_FINITE_FRACTION:.0%}): "
                f"the frame is blank or masked; re-reduce it or reject the observation"
            )
        data[~finite] = np.median(data[finite])
        problems.append(f"{what}: {n_bad} non-finite pixels ({n_bad / data.size:.2%}) replaced by the median")
    return data, header


def _check_header_size(f: Any, what: str, gzipped: bool, limits: ReadLimits) -> None:
    """Count the header cards up to the first 2-D image HDU from the raw 2880-byte blocks, and
    refuse more than ``limits.max_header_cards`` before astropy parses (and allocates) them.

    Only what locating the image needs is read from each header (``XTENSION``, ``BITPIX``,
    ``NAXISn``, ``PCOUNT``, ``GCOUNT``, ``ZIMAGE``, ``ZNAXISn``); data units before the image are
    skipped. Anything malformed is left to astropy, whose errors the caller already reports.
    """
    stream = gzip.GzipFile(fileobj=f, mode="rb") if gzipped else f
    cards = 0
    while True:
        keys: dict[str, str] = {}
        ended = False
        while not ended:
            block = stream.read(_BLOCK)
            if len(block) < _BLOCK:
                return  # truncated or at the end: astropy reports it
            for start in range(0, _BLOCK, 80):
                cards += 1
                key = block[start : start + 8].decode("ascii", "replace").strip()
                if key == "END":
                    ended = True
                    break
                if block[start + 8 : start + 10] == b"= " and (
                    key in _SIZE_KEYS or key.startswith(("NAXIS", "ZNAXIS"))
                ):
                    keys[key] = _card_value(block[start + 10 : start + 80])
            if cards > limits.max_header_cards:
                raise FitsError(
                    f"{what} has more than {limits.max_header_cards} header cards "
                    f"({limits.max_header_cards * 80} bytes) before its image: strip the HISTORY/COMMENT "
                    "cards, or raise ASTRID_INFERENCE_MAX_HEADER_CARDS"
                )
        data = _data_bytes(keys)
        if data is None:
            return  # the image (or a header astropy will explain): stop here
        if data > max_file_bytes(limits.max_side):
            return  # astropy meets the same extension; the size checks refuse it
        if gzipped:
            for _ in range(data // (1 << 20)):
                stream.read(1 << 20)
            stream.read(data % (1 << 20))
        else:
            stream.seek(data, io.SEEK_CUR)


_SIZE_KEYS = {"XTENSION", "BITPIX", "PCOUNT", "GCOUNT", "ZIMAGE"}


def _card_value(raw: bytes) -> str:
    text = raw.decode("ascii", "replace").strip()
    if text.startswith("'"):
        return text[1:].split("'", 1)[0].strip()
    return text.split("/", 1)[0].strip()


def _data_bytes(keys: dict[str, str]) -> int | None:
    """Bytes (padded to whole blocks) of the data unit after a header; ``None`` when this HDU is
    the 2-D image the reader will use, or its size keywords are unreadable."""
    try:
        prefix = "ZNAXIS" if keys.get("ZIMAGE") == "T" else "NAXIS"
        shape = [int(keys.get(f"{prefix}{i}", "0")) for i in range(1, int(keys.get(prefix, "0")) + 1)]
        if len([n for n in shape if n > 1]) == 2 and all(n >= 1 for n in shape):
            return None
        axes = [int(keys.get(f"NAXIS{i}", "0")) for i in range(1, int(keys.get("NAXIS", "0")) + 1)]
        bits = abs(int(keys.get("BITPIX", "8")))
        pcount, gcount = int(keys.get("PCOUNT", "0")), int(keys.get("GCOUNT", "1"))
    except ValueError:
        return None
    if any(n < 0 for n in [*axes, pcount, gcount]):
        return None
    size = bits // 8 * gcount * (pcount + math.prod(axes)) if axes else 0
    return -(-size // _BLOCK) * _BLOCK


def celestial_wcs(
    header: fits.Header,
    shape: tuple[int, int],
    what: str,
    problems: list[str],
    limits: ReadLimits | None = None,
) -> WCS | None:
    """The header's celestial WCS when it is sane and plausible within ``limits``; ``None`` (and
    the reason appended to ``problems``) otherwise: the one WCS check of the project."""
    limits = limits or ReadLimits()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
            if not wcs.has_celestial:
                problems.append(f"{what} has no celestial WCS (no RA/Dec CTYPE): detections get no RA/Dec")
                return None
            wcs = wcs.celestial
            h, w = shape
            probe = np.array([[0.0, 0.0], [w - 1.0, h - 1.0], [(w - 1) / 2, (h - 1) / 2]])
            world = np.asarray(wcs.all_pix2world(probe, 0), dtype=float)
            if not np.all(np.isfinite(world)):
                problems.append(
                    f"{what} has a WCS that gives no finite RA/Dec inside the frame: detections get no RA/Dec"
                )
                return None
            problem = wcs_problem(
                header, wcs, shape, min_scale=limits.min_pixel_scale, max_scale=limits.max_pixel_scale
            )
        if problem:
            problems.append(
                f"{what} has an implausible WCS ({problem}): detections get no RA/Dec; fix the header's WCS"
            )
            return None
        return wcs
    except Exception as exc:  # astropy raises many kinds for bad WCS keywords
        problems.append(f"{what} has a broken WCS ({type(exc).__name__}: {exc}): detections get no RA/Dec")
        return None


def read_image(
    path: Any,
    role: str = "image",
    *,
    limits: ReadLimits | None = None,
    problems: list[str] | None = None,
) -> tuple[np.ndarray, fits.Header]:
    """One image and its header, read and checked as :func:`load_triplet` reads each of its files
    (``FitsError`` naming the file and the problem), within ``limits`` (default: ReadLimits()).
    Softer problems (non-finite pixels replaced) are appended to ``problems`` when given."""
    return _read_image(to_path(path), role, limits or ReadLimits(), [] if problems is None else problems)


def load_triplet(
    science: Any,
    reference: Any,
    difference: Any = None,
    *,
    max_side: int = 8192,
    name: str | None = None,
    limits: ReadLimits | None = None,
) -> Triplet:
    """Read a triplet (float32, same shape). Without ``difference`` the triplet's ``difference``
    is ``None``: a science/reference pair is never turned into science − reference here (on real
    pairs that leaves every star as a residual); it goes through the subtraction step
    (:mod:`astrid.preprocess`) or is refused.
    Raises :class:`FitsError` for any file that cannot give a sane image (see module docs).
    ``limits`` (default: :class:`ReadLimits` with ``max_side``) bounds sizes and the WCS."""
    if isinstance(max_side, bool) or int(max_side) < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    limits = limits or ReadLimits(max_side=int(max_side))
    problems: list[str] = []
    paths = {"science": to_path(science), "reference": to_path(reference)}
    if difference is not None:
        paths["difference"] = to_path(difference)
    images: dict[str, np.ndarray] = {}
    header = None
    for role, path in paths.items():
        images[role], h = _read_image(path, role, limits, problems)
        if role == "science":
            header = h
    for role in list(images)[1:]:
        if images[role].shape != images["science"].shape:
            sh, so = images["science"].shape, images[role].shape
            raise FitsError(
                f"shape mismatch: science {_label(paths['science'])} is {sh[1]}×{sh[0]} but {role} "
                f"{_label(paths[role])} is {so[1]}×{so[0]}: resample the {role} onto the science frame"
            )
    assert header is not None
    wcs = celestial_wcs(
        header, images["science"].shape, f"science file {_label(paths['science'])}", problems, limits
    )
    return Triplet(
        science=images["science"],
        reference=images["reference"],
        difference=images.get("difference"),
        header=header,
        wcs=wcs,
        name=name if name is not None else file_stem(paths["science"]),
        problems=problems,
    )


def write_image(path: Any, data: np.ndarray, header: fits.Header | None = None) -> Any:
    """Write ``data`` (2-D) as a float32 primary-HDU FITS file at ``path`` (str, ``pathlib`` or
    ``UPath``, including ``s3://``); returns the path written."""
    path = to_path(path)
    array = np.asarray(data, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"write_image expects a 2-D image, got shape {array.shape}")
    hdu = fits.PrimaryHDU(data=array, header=header.copy() if header is not None else None)
    buffer = io.BytesIO()
    hdu.writeto(buffer, output_verify="silentfix")
    with path.open("wb") as f:
        f.write(buffer.getvalue())
    return path
