"""``astrid reprocess``: past observations through another model version (see astrid.reprocess).

    astrid reprocess --model 2 [--from 2026-11-01] [--to 2026-12-01] [--limit N]

The same as the ``astrid_reprocess`` DAG, in this process: results are stored beside the live
ones under the model's registry version; nothing is claimed; run it again to go on.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reprocess",
        help="re-run detection on past observations with another model version (results side by side)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--model",
        required=True,
        help="champion, challenger, a registry version number, models:/astrid-unet@alias, or a model directory",
    )
    p.add_argument(
        "--from", dest="observed_from", default=None, help="observed at or after (ISO date/time or MJD)"
    )
    p.add_argument("--to", dest="observed_to", default=None, help="observed before (ISO date/time or MJD)")
    p.add_argument("--limit", type=int, default=None, help="at most this many observations this time")
    p.add_argument("--threshold", type=float, default=None, help="probability cut (default: configured)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: configured)")
    p.add_argument("--catalog", default=None, help="SQLAlchemy URL (default: the embedded SQLite catalog)")
    p.add_argument("--storage", default=None, help="storage root URI (default: ASTRID_STORAGE_ROOT)")
    p.add_argument("--tracking-uri", default=None, help="MLflow registry (default: MLFLOW_TRACKING_URI)")
    p.set_defaults(func=run_reprocess)


def run_reprocess(args: argparse.Namespace) -> int:
    import uuid
    from datetime import UTC, datetime

    from astrid.catalog import Catalog
    from astrid.config import load_config
    from astrid.dag_kinds import REPROCESS_KIND
    from astrid.errors import ConfigError
    from astrid.imaging.fits import ReadLimits
    from astrid.paths import default_catalog_url, default_mlflow_uri, default_storage_uri
    from astrid.pipeline import RunInfo
    from astrid.registry import ModelRegistry
    from astrid.reprocess import check_request, run_reprocess
    from astrid.storage import StorageRoot

    config = load_config()
    threshold = config.confidence_threshold if args.threshold is None else args.threshold
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold {args.threshold} must lie strictly between 0 and 1")
    # bad input fails before anything is opened or loaded, naming the option
    check_request(args.observed_from, args.observed_to, args.limit, names=("--from", "--to"))
    catalog = Catalog(args.catalog or default_catalog_url())
    catalog.migrate()
    run_id = f"cli-reprocess-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    summary = run_reprocess(
        catalog=catalog,
        storage=StorageRoot.from_uri(args.storage or default_storage_uri()),
        registry=ModelRegistry(args.tracking_uri or default_mlflow_uri()),
        run=RunInfo(run_id=run_id, dag_id="cli", kind=REPROCESS_KIND),
        model=args.model,
        threshold=threshold,
        max_side=config.max_image_side,
        batch_size=config.inference_batch_size,
        device=args.device or config.device,
        vetting=config.vetting_level,
        observed_from=args.observed_from,
        observed_to=args.observed_to,
        limit=args.limit,
        zeropoint_key=config.zeropoint_key,
        limits=ReadLimits.from_config(config),
    )
    print(
        f"reprocessed {summary['processed']} observation(s) with model version {summary['model_version']}: "
        f"{summary['detections']} detections, {summary['failed']} failed"
        + ("; more remain: run it again to go on" if summary["remaining"] else "")
    )
    for error in summary["errors"]:
        print(f"  failed: {error['observation']}: {error['error']}")
    return 0 if not summary["failed"] else 1
