"""``astrid ingest``: register your own FITS triplets (one, or a manifest of many).

    astrid ingest --science S --reference R [--difference D | --no-subtract] [--id ID] [--meta key=value ...]
    astrid ingest --manifest FILE          (CSV or JSON lines; see astrid.ingest.read_manifest)

One line per observation on stdout (``--json``: one JSON object per line). A refused input gives
one line on stderr naming the file or row and the problem, exit status 2, and nothing of that
observation registered. A manifest stops at its first bad row; the rows before it stay
registered, and running the manifest again is safe (ingestion is idempotent by content).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from astrid.errors import IngestError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="register your own science/reference(/difference) FITS files for detection",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--science", help="science frame (local path or s3:// URI)")
    p.add_argument(
        "--reference", help="reference frame (the same shape as the science frame when --difference is given)"
    )
    p.add_argument(
        "--difference",
        help="difference image (science − reference, aligned and PSF-matched) made elsewhere. Without "
        "it AstrID aligns the reference to the science, PSF-matches and subtracts them (the reference "
        "may have another pointing, orientation, size and seeing)",
    )
    p.add_argument(
        "--no-subtract",
        dest="subtract",
        action="store_false",
        default=None,
        help="without --difference, do not subtract now: register the pair 'ingested' for the DAGs' "
        "subtract task (default: ASTRID_INFERENCE_INGEST_SUBTRACT, on)",
    )
    p.add_argument("--id", dest="name", help="observation id (default: <science file stem>-<content hash>)")
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata kept with it (repeatable)"
    )
    p.add_argument("--manifest", help="CSV or JSON-lines file listing many triplets instead")
    p.add_argument(
        "--no-wcs",
        action="store_true",
        help="accept frames without a celestial WCS (detections then get no RA/Dec)",
    )
    p.add_argument(
        "--mode",
        choices=("copy", "reference"),
        default=None,
        help="copy into the storage root (default, ASTRID_INFERENCE_INGEST_MODE) or reference in place "
        "(files already under the storage root)",
    )
    p.add_argument("--catalog", default=None, help="SQLAlchemy URL (default: the embedded SQLite catalog)")
    p.add_argument("--storage", default=None, help="storage root URI (default: ASTRID_STORAGE_ROOT)")
    p.add_argument("--json", action="store_true", help="one JSON object per observation")
    p.set_defaults(func=run_ingest)


def _requests(args: argparse.Namespace) -> list[Any]:
    from astrid.ingest import IngestRequest, read_manifest

    single = [o for o in ("science", "reference", "difference", "name") if getattr(args, o)]
    if args.manifest:
        if single or args.meta:
            raise IngestError(
                "give either --manifest or --science/--reference/..., not both", field="manifest"
            )
        requests = read_manifest(args.manifest)
        from dataclasses import replace

        if args.no_wcs:
            requests = [replace(r, require_wcs=False) for r in requests]
        if args.subtract is not None:
            requests = [replace(r, subtract=args.subtract) for r in requests]
        return requests
    if not args.science or not args.reference:
        raise IngestError("give --science and --reference (or --manifest FILE)", field="science")
    from astrid.ingest import check_name, parse_meta

    return [
        IngestRequest(
            science=args.science,
            reference=args.reference,
            difference=args.difference,
            name=check_name(args.name),
            meta=parse_meta(args.meta),
            require_wcs=not args.no_wcs,
            subtract=args.subtract,
        )
    ]


def _line(result: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(result.to_json())
    if not result.created:
        return f"already registered: observation {result.observation_id} {result.name} (same content)"
    where = result.uris["science"].rsplit("/", 1)[0]
    ring = "arrival announced" if result.announced else "no arrival message: the cron run will pick it up"
    return f"registered observation {result.observation_id} {result.name} ({result.status}; files in {where}; {ring})"


def run_ingest(args: argparse.Namespace) -> int:
    import sqlalchemy.exc

    from astrid.ingest import ingestor_from_config

    requests = _requests(args)  # every row checked before any file is read
    try:
        ingestor = ingestor_from_config(args.catalog, args.storage, mode=args.mode)
        ingestor.ingest_many(iter(requests), on_result=lambda r: print(_line(r, args.json), flush=True))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise IngestError(
            f"catalog unreachable ({type(exc).__name__}): check --catalog / ASTRID_CATALOG_URL"
        ) from None
    return 0
