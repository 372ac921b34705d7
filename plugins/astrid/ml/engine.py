"""Tiled, batched, device-aware inference: any frame size, memory bounded by the tile batch.

How a frame is processed (``InferenceEngine.probability``):

1. Robust statistics (background, noise) of each channel are measured once on the whole frame
   (:mod:`astrid.ml.normalise`), so every tile is normalised identically.
2. The frame is covered by a grid of *cores* of ``tile - overlap`` pixels. Each tile is its core
   plus ``overlap / 2`` pixels of context on every side (adjacent tiles overlap by ``overlap``);
   pixels outside the frame are filled by reflection (``numpy`` "reflect" mode). Only the core
   of each tile's output is kept, so as long as ``overlap / 2`` exceeds the network's receptive
   field the stitched map equals a full-frame pass: no seams, no blending needed. Frames smaller
   than a tile get one tile shrunk to fit; sizes need not be multiples of anything.
   The grid is spread evenly: a 2048-px side with 640-px tiles gets four 616-px tiles (512-px
   cores), not five tiles of which the last is mostly padding — less overlap, fewer pixels.
3. The frame is normalised one *band* of tile rows at a time (the band's rows, reflected at the
   frame edges, across the full width), and tiles are sliced out of the band and sent to the
   device ``batch_size`` at a time. Host memory is bounded by one band plus one batch of tiles
   (plus the input and output maps), not by a normalised copy of the frame; normalising a band
   at once instead of tile by tile avoids re-normalising the overlaps.
4. ``torch.inference_mode`` and ``channels_last`` memory format (about 2× faster convolutions
   on CPU as well as on GPU). Precision ``"auto"``: on CUDA, autocast to bf16 where supported
   (else fp16); on a CPU with native bf16 (AVX512-BF16/AMX; oneDNN reports it), autocast to bf16
   — 2.5× the fp32 throughput on a test machine that had it — else fp32. Probabilities
   differ from fp32 by ~1e-2 at most (see tests/unit/test_ml_engine.py); ``precision="fp32"``
   gives bit-stable output.
5. Out of memory (``torch.OutOfMemoryError``, a ``RuntimeError`` mentioning "out of memory", or
   host ``MemoryError``): the batch is halved and the same tiles retried; the smaller batch size
   is kept for the rest of the engine's life. Only if a single tile fails does the observation
   fail, with an :class:`~astrid.errors.ObservationError`.

6. Host memory is reused, not returned (CPU engines; :func:`retain_freed_host_memory`): a tile
   batch's activations are 10–200 MB each, and glibc serves every such block with a fresh
   ``mmap`` and unmaps it on ``free``, so each forward pass page-faults its whole working set in
   again — 1.3 million minor faults and ~40 % of the wall time of a 2048² frame on this 2-core
   machine (docs/benchmarks.md). ``retain_host_memory=False`` keeps glibc's defaults.

7. The outermost ``border`` pixels (default 8) of the probability map are set to 0. Every
   PSF-matched difference image has an invalid rim where the matching kernel ran off the
   reference (sources half outside the frame leave one-sided residuals); survey pipelines mask it
   and so do we, rather than report residuals there as transients. ``border=0`` disables it.

Devices: ``"auto"`` picks CUDA when ``torch.cuda.is_available()``, else CPU. ``"cuda"`` (or
``"cuda:N"``) without a usable GPU falls back to CPU with a ``RuntimeWarning`` and a log line
(a worker without a GPU still does the work, slower); ``"cpu"`` forces CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astrid.errors import ObservationError
from astrid.ml import normalise
from astrid.ml.detect import Detection, extract_detections
from astrid.ml.unet import fuse_for_inference, receptive_field_radius
from astrid.ml.weights import ModelCard, load_model, resolve_model_paths

log = logging.getLogger(__name__)

DEFAULT_TILE = {"cpu": 640, "cuda": 1024}
DEFAULT_BORDER = 8


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA if available else CPU; CUDA requested but unavailable → CPU + warning."""
    name = str(device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            message = f"device {name!r} requested but CUDA is not available; falling back to CPU"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            log.warning(message)
            return torch.device("cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA OOM, host ``MemoryError`` and RuntimeErrors that say "out of memory"."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(exc, MemoryError) or (oom_type and isinstance(exc, oom_type)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # older torch / builds without oneDNN
        return False


@functools.cache
def retain_freed_host_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it (process-wide, once).

    Why: large blocks (≥ 32 MB at most) are ``mmap``-ed and unmapped on every allocation, so a
    loop of same-sized forward passes pays a page fault per 4 KiB of activations each time.
    ``M_MMAP_MAX = 0`` serves them from the heap and ``M_TRIM_THRESHOLD`` = 2 GiB stops the heap
    from being trimmed back; the resident set then stays at its high-water mark, which the tile
    batch bounds. Returns False (and changes nothing) where there is no glibc ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    done = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    if done:
        log.debug("glibc malloc: freed memory kept for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)")
    return done


def _even_core(length: int, max_core: int, multiple: int) -> int:
    """Core size that covers ``length`` with as few cores as ``max_core`` allows, evenly spread."""
    n = -(-length // max_core)
    return min(max_core, _ceil_to(-(-length // n), multiple))


class InferenceEngine:
    """Runs a loaded U-Net over whole observations (any size) and extracts detections.

    ``tile`` and ``overlap`` must be multiples of the network's size multiple (8 for depth 3)
    and ``overlap < tile``. ``overlap / 2`` is the context margin discarded on each side of a
    tile; the default makes it ≥ the receptive-field radius (104 → 52 ≥ 51 for depth 3), which
    makes tiled output equal to a full-frame pass. ``tile`` is the largest tile: 640 on CPU (cache- and
    memory-friendly; 616² tiles for a 2048² frame) and 1024 on CUDA (fewer, larger kernels).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        tile: int | None = None,
        overlap: int | None = None,
        precision: str = "auto",
        border: int = DEFAULT_BORDER,
        retain_host_memory: bool = True,
    ) -> None:
        multiple = int(getattr(model, "multiple", 8))
        self.device = resolve_device(device)
        if tile is None:
            tile = DEFAULT_TILE.get(self.device.type, 512)
        if overlap is None:
            radius = receptive_field_radius(int(getattr(model, "depth", 3)))
            overlap = _ceil_to(2 * radius, multiple)
        if tile <= 0 or tile % multiple or overlap < 0 or overlap % multiple or overlap >= tile:
            raise ValueError(
                f"tile ({tile}) and overlap ({overlap}) must be multiples of {multiple} with 0 <= overlap < tile"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.card = card
        if border < 0:
            raise ValueError("border must be >= 0")
        self.border = int(border)
        self.batch_size = int(batch_size)
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.margin = self.overlap // 2
        self.multiple = multiple
        self.precision = self._resolve_precision(precision)
        self.in_channels = int(getattr(model, "in_channels", 3))
        self.model = fuse_for_inference(model).to(self.device, memory_format=torch.channels_last)
        if retain_host_memory and self.device.type == "cpu":
            retain_freed_host_memory()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_path(
        cls, path: str | os.PathLike, device: str = "auto", batch_size: int = 8, **kwargs: Any
    ) -> InferenceEngine:
        model, card = load_model(path)
        return cls(model, card, device=device, batch_size=batch_size, **kwargs)

    @property
    def version(self) -> str:
        """Model version string recorded with every detection (``name@version``)."""
        if self.card is None:
            return "unversioned"
        return f"{self.card.name}@{self.card.version}"

    @property
    def threshold(self) -> float:
        """The card's recommended threshold (0.5 when the card does not say)."""
        return self.card.threshold if self.card is not None else 0.5

    def _resolve_precision(self, precision: str) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for plain fp32."""
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
        if precision == "fp32":
            return None
        if self.device.type == "cuda":
            if precision == "fp16":
                return torch.float16
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if precision == "fp16":  # CPU fp16 convolutions are slower than fp32
            return None
        if precision == "bf16" or cpu_supports_bf16():
            return torch.bfloat16
        return None

    # -- tiling ---------------------------------------------------------------------------
    def _tile_shape(self, h: int, w: int) -> tuple[int, int]:
        """Tile (height, width): cores spread evenly over the frame, at most ``tile`` with context."""
        core = self.tile - self.overlap
        return (
            _even_core(h, core, self.multiple) + self.overlap,
            _even_core(w, core, self.multiple) + self.overlap,
        )

    def _tiles(
        self, channels: tuple[np.ndarray, ...], stats: normalise.FrameStats
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (row0, col0, normalised (3, th, tw) tile) for every core, in raster order."""
        h, w = channels[0].shape
        th, tw = self._tile_shape(h, w)
        m = self.margin
        # the matched channel correlates with the PSF: give the band that much extra context
        halo = normalise.matched_halo(stats) if self.in_channels >= 5 else 0
        col_starts = range(0, w, tw - self.overlap)
        last = col_starts[-1] - m + tw  # the band's columns: every tile's, reflected at the edges
        cols = normalise.reflect_index(np.arange(-m - halo, last + halo), w)
        for r0 in range(0, h, th - self.overlap):
            rows = normalise.reflect_index(np.arange(r0 - m - halo, r0 - m + th + halo), h)
            diff, sci, ref = (ch[rows][:, cols] for ch in channels)
            band = normalise.normalise_stack(sci, ref, diff, stats, channels=self.in_channels)
            del diff, sci, ref
            if halo:
                band = band[:, halo:-halo, halo:-halo]
            for c0 in col_starts:
                yield r0, c0, band[:, :, c0 : c0 + tw]

    # -- forward --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.precision)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of the *cores* of a (B, 3, th, tw) batch → (B, th - overlap, tw - overlap)."""
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        m = self.margin
        with torch.inference_mode(), self._autocast():
            logits = self.model(x)
            core = logits[:, 0, m : logits.shape[2] - m, m : logits.shape[3] - m]
            return torch.sigmoid(core.float()).cpu().numpy()

    def _run(self, tiles: list[np.ndarray], name: str) -> list[np.ndarray]:
        """Forward a list of tiles, halving the batch on OOM; returns one core per tile."""
        out: list[np.ndarray] = []
        i = 0
        while i < len(tiles):
            n = min(self.batch_size, len(tiles) - i)
            try:
                out.extend(self._forward(np.stack(tiles[i : i + n])))
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if n <= 1:
                    th, tw = tiles[i].shape[1:]
                    raise ObservationError(
                        f"{name}: out of memory on {self.device} even for a single {th}x{tw} tile "
                        f"({exc}); use a smaller tile or a device with more free memory"
                    ) from exc
                self.batch_size = max(1, n // 2)
                log.warning(
                    "out of memory on %s with a batch of %d tiles; retrying with %d",
                    self.device,
                    n,
                    self.batch_size,
                )
                continue
            i += n
        return out

    # -- public API -----------------------------------------------------------------------
    @property
    def min_excess(self) -> float | None:
        """Star-residual vetting level from the card (``thresholds.star_residual_min_excess``).

        ``None`` (cards written before vetting existed, or calibrated without it): no vetting.
        """
        if self.card is None:
            return None
        value = self.card.thresholds.get("star_residual_min_excess")
        return None if value is None else float(value)

    def probability(self, triplet: Any) -> np.ndarray:
        """Per-pixel transient probability (float32, the frame's shape) for a triplet-like object.

        Anything with ``.science``, ``.reference`` and ``.difference`` 2-D arrays of one shape
        (e.g. :class:`astrid.imaging.fits.Triplet` or a ``SyntheticObservation``).
        """
        return self._probability(*self._prepare(triplet))

    def analyse(
        self, triplet: Any, threshold: float | None = None, min_excess: float | str | None = "card"
    ) -> tuple[np.ndarray, list[Detection]]:
        """The probability map and the detections in it, vetted against the frame's star residuals.

        ``threshold`` defaults to the card's; ``min_excess`` (``"card"``: the card's
        ``star_residual_min_excess``, ``None``: no vetting) drops candidates on stars that are
        not that many σ above the residual the frame's other stars leave
        (:mod:`astrid.ml.vetting`). The frame statistics are computed once for both steps.
        """
        name, channels, stats = self._prepare(triplet)
        probability = self._probability(name, channels, stats)
        detections = extract_detections(
            probability,
            channels[0],
            self.threshold if threshold is None else threshold,
            getattr(triplet, "wcs", None),
        )
        level = self.min_excess if min_excess == "card" else min_excess
        if level is not None and detections:
            from astrid.ml.vetting import StarResidualVetter

            detections = StarResidualVetter(triplet, stats).keep(detections, float(level))
        return probability, detections

    def _prepare(self, triplet: Any) -> tuple[str, tuple[np.ndarray, ...], normalise.FrameStats]:
        name = str(getattr(triplet, "name", None) or "observation")
        channels = tuple(np.asarray(getattr(triplet, k)) for k in ("difference", "science", "reference"))
        shapes = {c.shape for c in channels}
        if len(shapes) != 1 or channels[0].ndim != 2 or 0 in channels[0].shape:
            raise ObservationError(
                f"{name}: difference/science/reference must be non-empty 2-D arrays of one shape, got "
                f"{[c.shape for c in channels]}"
            )
        return name, channels, normalise.stack_stats(channels[1], channels[2], channels[0])

    def _probability(
        self, name: str, channels: tuple[np.ndarray, ...], stats: normalise.FrameStats
    ) -> np.ndarray:
        h, w = channels[0].shape
        out = np.empty((h, w), dtype=np.float32)
        pending: list[tuple[int, int, np.ndarray]] = []

        def flush() -> None:
            cores = self._run([t for _, _, t in pending], name)
            for (r0, c0, _), core in zip(pending, cores, strict=True):
                rh, cw = min(core.shape[0], h - r0), min(core.shape[1], w - c0)
                out[r0 : r0 + rh, c0 : c0 + cw] = core[:rh, :cw]
            pending.clear()

        for item in self._tiles(channels, stats):
            pending.append(item)
            if len(pending) >= self.batch_size:
                flush()
        if pending:
            flush()
        if self.border:
            b = self.border
            out[:b], out[-b:], out[:, :b], out[:, -b:] = 0.0, 0.0, 0.0, 0.0
        return out

    def detect(self, triplet: Any, threshold: float | None = None) -> list[Detection]:
        """Detections above ``threshold`` (default: the card's), vetted as the card says."""
        return self.analyse(triplet, threshold)[1]


@functools.lru_cache(maxsize=4)
def _cached_engine(
    weights: str, mtime_ns: int, card_mtime_ns: int, device: str, batch_size: int
) -> InferenceEngine:
    del mtime_ns, card_mtime_ns  # part of the cache key only: a retrained file is a new engine
    return InferenceEngine.from_path(weights, device=device, batch_size=batch_size)


def get_engine(
    path: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 8
) -> InferenceEngine:
    """The process-wide engine for a model: loaded once, reused by every task in the worker.

    Cached on (resolved weights path, weights and card mtimes, resolved device, batch size),
    so replacing the weights on disk loads the new model on next use. ``path`` defaults to the
    shipped model (``ASTRID_MODEL_PATH`` or ``include/models/astrid-unet``).
    """
    if path is None:
        from astrid.paths import shipped_model_path

        path = shipped_model_path()
    weights, card = resolve_model_paths(path)
    weights = weights.resolve()
    try:
        mtime, card_mtime = weights.stat().st_mtime_ns, Path(card).stat().st_mtime_ns
    except OSError:
        mtime = card_mtime = -1  # load_model raises the proper ModelError
    resolved = str(resolve_device(device))
    return _cached_engine(str(weights), mtime, card_mtime, resolved, int(batch_size))


get_engine.cache_clear = _cached_engine.cache_clear  # type: ignore[attr-defined]
