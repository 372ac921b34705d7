"""``astrid train``, ``astrid calibrate``, ``astrid evaluate`` and ``astrid detect`` (registered by ``astrid.cli``).

``astrid detect`` is a contract used by external tools::

    astrid detect --science S.fits --reference R.fits [--difference D.fits] [--threshold 0.5]
                  [--model PATH] [--device auto] [--vetting card|off|Z] --output catalog.csv

writes a CSV whose header starts with exactly ``x,y,ra,dec,score,flux`` (one row per detection,
0-based pixel coordinates, ``ra``/``dec`` in degrees, empty without a trustworthy WCS), followed by
the photometry ``flux_err,snr,mag,mag_err`` (:mod:`astrid.photometry`; ``mag``/``mag_err`` empty
without a zero point in the header). Bad inputs exit 2 with one clear line on stderr and leave no
output file: the catalog is written to a temporary file next to ``--output`` and moved into place
only when complete. It never harms its inputs: an ``--output`` that is (or links to) an input is
refused, an existing output is replaced only with ``--overwrite``, and the file gets the user's
umask (an overwritten file keeps its mode).

Without ``--difference`` AstrID makes one (:mod:`astrid.preprocess`: the reference aligned to the
science by WCS or star patterns, PSF-matched, subtracted; the reference may have another pointing,
orientation, size and seeing) and writes it, with its noise map, beside the catalog as
``<output stem>_difference.fits`` and ``<output stem>_noise.fits`` (under the same safety rules as
the catalog). A pair that gives no honest difference exits 2 naming the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import stat
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _default_model() -> Path:
    from astrid.paths import shipped_model_path

    return shipped_model_path()


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return n


def _fraction(value: str) -> float:
    f = float(value)
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return f


def _command_line(subcommand: str) -> str | None:
    """The command as typed (``astrid <args>``), recorded in the model card and markdown; ``None``
    when ``subcommand`` was not run from the command line (then the callee writes its own)."""
    return "astrid " + " ".join(sys.argv[1:]) if sys.argv and subcommand in sys.argv else None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``detect`` to the ``astrid`` command line."""
    _add_train(subparsers)
    _add_calibrate(subparsers)
    _add_evaluate(subparsers)
    _add_detect(subparsers)


# -- train ---------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    from astrid.ml.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train the U-Net on the synthetic survey and write safetensors weights + model card",
        description="Deterministic for a given --seed (and --threads). Training observations use seeds "
        ">= 1,000,000, so any evaluation seed below that is held out.",
    )
    p.add_argument(
        "--output", required=True, help="model directory to write (model.safetensors + model_card.json)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument(
        "--observations",
        type=_positive_int,
        default=d.observations,
        help=f"training observations to generate (default {d.observations})",
    )
    p.add_argument(
        "--size", type=_positive_int, default=d.size, help=f"training frame side (default {d.size})"
    )
    p.add_argument("--patch", type=_positive_int, default=d.patch, help=f"patch side (default {d.patch})")
    p.add_argument(
        "--patches-per-epoch",
        type=_positive_int,
        default=d.patches_per_epoch,
        help=f"patches per epoch (default {d.patches_per_epoch})",
    )
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument(
        "--base-channels", type=_positive_int, default=d.base_channels, help=f"default {d.base_channels}"
    )
    p.add_argument("--depth", type=_positive_int, default=d.depth, help=f"default {d.depth}")
    p.add_argument(
        "--in-channels",
        type=int,
        choices=(3, 4, 5),
        default=d.in_channels,
        help="input channels: 3 = difference, science, reference; 4 adds the subtraction residual; "
        f"5 adds the matched-filter significance (default {d.in_channels})",
    )
    p.add_argument(
        "--calibration-observations",
        type=int,
        default=d.calibration_observations,
        help="held-out observations used to place the operating point at probability 0.5 "
        f"(0 = no calibration; default {d.calibration_observations})",
    )
    p.add_argument(
        "--mine-after",
        default=",".join(map(str, d.mine_after)),
        help="epochs after which the model's false positives are mined as hard negatives "
        f"(comma-separated; default {','.join(map(str, d.mine_after))}; empty = never)",
    )
    p.add_argument(
        "--missed-fraction",
        type=_fraction,
        default=d.missed_fraction,
        help="share of positive patches drawn from the transients the model missed at the last mining "
        f"(SNR >= {d.missed_min_snr}, p < {d.missed_threshold}; 0 = off; default {d.missed_fraction})",
    )
    p.add_argument(
        "--bright-hosts",
        type=_fraction,
        default=d.bright_host_fraction,
        help="share of training frames with bright bulge+disc galaxy hosts (0 = off; default "
        f"{d.bright_host_fraction})",
    )
    p.add_argument(
        "--threads", type=_positive_int, default=d.threads, help=f"torch CPU threads (default {d.threads})"
    )
    p.add_argument("--version", default=None, help="model version for the card (default: from the date)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from astrid.ml.train import TrainConfig, train

    config = TrainConfig(
        seed=args.seed,
        epochs=args.epochs,
        observations=args.observations,
        size=args.size,
        patch=args.patch,
        patches_per_epoch=args.patches_per_epoch,
        batch_size=args.batch_size,
        base_channels=args.base_channels,
        depth=args.depth,
        in_channels=args.in_channels,
        calibration_observations=args.calibration_observations,
        threads=args.threads,
        mine_after=tuple(int(v) for v in args.mine_after.split(",") if v.strip()),
        missed_fraction=args.missed_fraction,
        bright_host_fraction=args.bright_hosts,
    )
    command = _command_line("train")
    result = train(config, args.output, version=args.version, command=command, progress=True)
    print(f"wrote {result.weights} ({result.card.parameters} parameters) in {result.seconds:.0f} s")
    return 0


# -- calibrate -----------------------------------------------------------------------------------
def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="re-place a trained model's operating point (threshold + star-residual vetting) without retraining",
        description="Undoes the card's previous calibration shift, calibrates on the card's calibration seeds "
        "and rewrites weights + card under a new version. Run `astrid evaluate` afterwards.",
    )
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument(
        "--observations",
        type=_positive_int,
        default=None,
        help="calibration observations (default: the card's recipe)",
    )
    p.add_argument("--version", default=None, help="model version for the card (default: from the date)")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from astrid.ml.train import recalibrate

    model = Path(args.model) if args.model else _default_model()
    command = _command_line("calibrate")
    card = recalibrate(
        model, observations=args.observations, version=args.version, command=command, progress=True
    )
    cal = card.training["calibration"]
    print(
        f"{card.name}@{card.version}: raw threshold {cal['threshold']} -> 0.5, star-residual vetting "
        f"{cal['min_excess']}; on the calibration frames: {cal['chosen']}"
    )
    return 0


# -- evaluate ------------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score the U-Net and the matched-filter baseline on held-out synthetic observations",
    )
    p.add_argument(
        "--model", default=None, help="model directory or .safetensors (default: the shipped model)"
    )
    p.add_argument("--seed", type=int, default=1000, help="first held-out seed (default 1000)")
    p.add_argument(
        "--observations", type=_positive_int, default=20, help="held-out observations (default 20)"
    )
    p.add_argument("--size", type=_positive_int, default=1024, help="frame side (default 1024)")
    p.add_argument("--threshold", type=float, default=None, help="U-Net threshold (default: the card's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument(
        "--varied",
        action="store_true",
        help="draw generator knobs per observation like training does (default: survey defaults)",
    )
    p.add_argument(
        "--output", default=None, help="markdown file to update with the results table (e.g. docs/model.md)"
    )
    p.add_argument("--no-card", action="store_true", help="do not write metrics into the model card / PNG")
    p.add_argument(
        "--crowded-every",
        type=int,
        default=0,
        help="make every Nth held-out frame a crowded (Galactic-plane) field (default 0: the generator's 10 %%)",
    )
    p.add_argument(
        "--realism",
        action="store_true",
        help="turn on the generator's realism options (bulge+disc hosts, diffraction spikes, nebulosity)",
    )
    p.add_argument(
        "--real-sky",
        type=int,
        default=0,
        help="also score N frames of the held-out real-sky family (Hubble Deep Field + injected transients)",
    )
    p.add_argument(
        "--real-sky-size", type=_positive_int, default=512, help="real-sky frame side (default 512)"
    )
    p.add_argument(
        "--plot",
        default=None,
        help="efficiency-versus-SNR PNG to write (default: beside the model with the card)",
    )
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from astrid.ml.evaluate import run_evaluation

    model = Path(args.model) if args.model else _default_model()
    command = _command_line("evaluate")
    outcome = run_evaluation(
        model,
        seed=args.seed,
        observations=args.observations,
        size=args.size,
        threshold=args.threshold,
        device=args.device,
        batch_size=args.batch_size,
        varied=args.varied,
        markdown=args.output,
        update_card=not args.no_card,
        command=command,
        progress=True,
        crowded_every=args.crowded_every,
        realism=args.realism,
        real_sky=args.real_sky,
        real_sky_size=args.real_sky_size,
        plot=args.plot,
    )
    print(outcome.markdown)
    return 0


# -- detect --------------------------------------------------------------------------------------
def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect transients in one observation and write a CSV catalog")
    p.add_argument("--science", required=True, help="science FITS image")
    p.add_argument(
        "--reference",
        required=True,
        help="reference FITS image (any pointing, size and seeing; the science's shape with --difference)",
    )
    p.add_argument(
        "--difference",
        default=None,
        help="difference FITS image made elsewhere (default: AstrID aligns, PSF-matches and subtracts, and "
        "writes <output stem>_difference.fits and _noise.fits beside --output)",
    )
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help="probability threshold, strictly between 0 and 1 (default: the model card's recommendation, "
        "0.5 for the shipped model)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model directory or .safetensors (default: $ASTRID_MODEL_PATH or include/models/astrid-unet)",
    )
    p.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto | cpu | cuda | cuda:N (default auto; cuda falls back to cpu)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=8, help="tiles per forward pass (default 8)")
    p.add_argument(
        "--vetting",
        type=_vetting,
        default="card",
        help="star-residual vetting: card (the model card's level, default), off, or a z level such as 2.5",
    )
    p.add_argument(
        "--output",
        required=True,
        help="CSV catalog to write (x,y,ra,dec,score,flux,flux_err,snr,mag,mag_err)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists (never an input)")
    p.set_defaults(func=_run_detect)


def _threshold(value: str) -> float:
    from astrid.config import check_threshold

    try:
        return check_threshold("--threshold", float(value), argparse.ArgumentTypeError)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold={value!r} is not a number") from None


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,2})?", value):
        raise argparse.ArgumentTypeError(f"--device={value!r} is not auto, cpu, cuda or cuda:N")
    return value


def _vetting(value: str) -> float | str | None:
    from astrid.config import parse_vetting
    from astrid.errors import ConfigError

    try:
        return parse_vetting("--vetting", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def write_catalog_atomic(path: str | os.PathLike, detections: list, *, overwrite: bool = True) -> Path:
    """Write detections as the contract CSV via a temp file in the same directory, then move it
    into place (no partial file, ever). Without ``overwrite`` an existing file is never replaced,
    even one created while the catalog was being written. The file gets the user's umask; a
    replaced file keeps its mode."""
    from astrid.pipeline import detections_csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = detections_csv([d.to_dict() for d in detections])
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
            os.fchmod(fh.fileno(), mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _link_new(tmp: str, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist (a hard link fails atomically if
    it does); on file systems without hard links, check and rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)


def check_output(output: str, inputs: dict[str, str | None], *, overwrite: bool) -> None:
    """Refuse an ``--output`` that would harm an input or an existing file, or that cannot be
    written, before any work is done (:class:`UsageError`, one line)."""
    from astrid.errors import UsageError

    out = Path(output)
    for flag, given in inputs.items():
        if given and "://" not in given and _same_file(out, Path(given)):
            raise UsageError(
                f"--output {output} is the same file as {flag} {given}: choose another output path"
            )
    if out.is_dir():
        raise UsageError(f"--output {output} is a directory: give the path of the CSV file to write")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UsageError(f"--output {output} already exists: pass --overwrite to replace it")
        if not out.is_file():
            raise UsageError(f"--output {output} is not a regular file: give the path of a CSV file")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--output {output} lies under {parent}, which is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--output {output} cannot be written: no write permission in {parent}")


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)  # hard links
    return False


def difference_outputs(output: str) -> dict[str, Path]:
    """Where ``astrid detect`` without ``--difference`` writes what it made: beside ``--output``,
    ``<stem>_difference.fits`` and ``<stem>_noise.fits``."""
    out = Path(output)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {role: out.with_name(f"{stem}_{role}.fits") for role in ("difference", "noise")}


def _check_difference_outputs(args: argparse.Namespace, inputs: dict[str, str | None]) -> dict[str, Path]:
    from astrid.errors import UsageError

    paths = difference_outputs(args.output)
    for role, path in paths.items():
        try:
            check_output(str(path), inputs, overwrite=args.overwrite)
        except UsageError as exc:
            raise UsageError(
                f"{exc} (the {role} image written beside --output when no --difference is given)"
            ) from None
    return paths


def _write_differences(pre: object, paths: dict[str, Path], overwrite: bool) -> None:
    """Write the difference and noise map through a temporary folder beside them, then move each
    into place (never a partial file; an existing one only with ``overwrite``)."""
    import shutil

    from astrid.errors import UsageError

    parent = paths["difference"].parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".astrid-difference-"))
    try:
        written = pre.write(tmp)  # type: ignore[attr-defined]
        for role, path in paths.items():
            os.chmod(written[role], 0o666 & ~_umask())
            try:
                if overwrite:
                    os.replace(written[role], path)
                else:
                    _link_new(str(written[role]), path)
            except FileExistsError:
                raise UsageError(f"{path} appeared while detecting: pass --overwrite to replace it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_detect(args: argparse.Namespace) -> int:
    from astrid.config import load_config
    from astrid.errors import ModelError, UsageError
    from astrid.imaging.fits import ReadLimits, load_triplet
    from astrid.ml.engine import get_engine
    from astrid.photometry import measure

    started = time.perf_counter()
    inputs = {"--science": args.science, "--reference": args.reference, "--difference": args.difference}
    check_output(args.output, inputs, overwrite=args.overwrite)
    made = None if args.difference else _check_difference_outputs(args, inputs)
    engine = get_engine(args.model or _default_model(), device=args.device, batch_size=args.batch_size)
    limits = ReadLimits.from_config(load_config())
    if made is None:
        triplet = load_triplet(args.science, args.reference, args.difference, limits=limits)
    else:
        from astrid.preprocess import subtract_files

        pre = subtract_files(args.science, args.reference, limits=limits)  # SubtractionError: exit 2
        triplet = pre.triplet
    for problem in getattr(triplet, "problems", None) or []:
        print(f"astrid detect: warning: {problem}", file=sys.stderr)
    try:
        detections = engine.analyse(triplet, args.threshold, args.vetting)[1]
    except RuntimeError as exc:  # torch: a model that loaded but cannot run on this input
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model {engine.version} failed during inference ({first})") from None
    detections = measure(detections, triplet, zeropoint_key=load_config().zeropoint_key)
    if made is not None:
        _write_differences(pre, made, args.overwrite)
        meta = pre.subtraction.meta
        print(
            f"astrid detect: subtracted ({meta['method']}, alignment {meta['alignment']} rms "
            f"{meta['alignment_rms_px']} px, held-out star χ²/pix {meta['star_chi2_median']}) -> "
            f"{made['difference']}, {made['noise']}",
            file=sys.stderr,
        )
    try:
        write_catalog_atomic(args.output, detections, overwrite=args.overwrite)
    except FileExistsError:
        raise UsageError(
            f"--output {args.output} appeared while detecting: pass --overwrite to replace it"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot write --output {args.output}: {exc.strerror or exc}") from None
    h, w = triplet.difference.shape
    print(
        f"{len(detections)} detections in {w}x{h} px with {engine.version} on {engine.device} "
        f"({time.perf_counter() - started:.1f} s) -> {args.output}",
        file=sys.stderr,
    )
    return 0
