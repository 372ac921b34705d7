"""The ``astrid`` console script.

Subcommands are registered by the module that owns them (``astrid.ml.commands`` owns train,
evaluate and detect; ``astrid.ingest_commands`` owns ingest, ``astrid.reprocess_commands`` reprocess), so this file stays a dispatcher. Errors from the core are printed as one
clear line and exit non-zero; tracebacks are for bugs, not for bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from astrid.errors import AstridError


def _add_seed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("seed", help="generate a synthetic survey and register it as preprocessed")
    p.add_argument("--count", type=int, default=10, help="observations to generate (default 10)")
    p.add_argument("--labelled", type=int, default=0, help="of which labelled (truth kept) for validation")
    p.add_argument("--size", type=int, default=2048, help="frame side in pixels (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="random seed (deterministic)")
    p.add_argument("--catalog", default=None, help="SQLAlchemy URL (default: the embedded SQLite catalog)")
    p.add_argument("--storage", default=None, help="storage root URI (default: file:// under AIRFLOW_HOME)")
    p.set_defaults(func=_run_seed)


def _run_seed(args: argparse.Namespace) -> int:
    from astrid.survey import seed_survey

    result = seed_survey(
        count=args.count,
        labelled=args.labelled,
        size=args.size,
        seed=args.seed,
        catalog_url=args.catalog,
        storage_root=args.storage,
        progress=True,
    )
    print(
        f"registered {len(result.observation_ids)} observations ({args.labelled} labelled) in {result.catalog_url}"
    )
    return 0


def _add_migrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="create or upgrade the observation catalog schema")
    p.add_argument("--catalog", default=None, help="SQLAlchemy URL (default: the embedded SQLite catalog)")
    p.set_defaults(func=_run_migrate)


def _run_migrate(args: argparse.Namespace) -> int:
    from astrid.catalog import Catalog
    from astrid.paths import default_catalog_url

    url = args.catalog or default_catalog_url()
    Catalog(url).migrate()
    print(f"catalog schema up to date: {url}")
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="catalog health: observations by status, stuck claims, recent runs")
    p.add_argument("--catalog", default=None, help="SQLAlchemy URL (default: the embedded SQLite catalog)")
    p.add_argument("--runs", type=int, default=10, help="recent inference runs to list (default 10)")
    p.set_defaults(func=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from astrid.catalog import Catalog
    from astrid.paths import default_catalog_url

    catalog = Catalog(args.catalog or default_catalog_url())
    catalog.migrate()  # idempotent; a fresh install has an empty catalog, not an error
    counts = catalog.status_counts()
    print("observations: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    stuck = catalog.stuck_claims()
    print(
        f"claims past their lease: {len(stuck)}"
        + (f" (ids {[s['id'] for s in stuck][:20]})" if stuck else "")
    )
    for run in catalog.runs()[: args.runs]:
        print(
            f"{run['dag_id']:28s} {run['run_id'][:40]:40s} {run['status']!s:8s} processed={run['processed']} "
            f"failed={run['failed']} rejected={run['rejected']} detections={run['detections']}"
        )
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other refusal of the CLI (subcommand
    parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="astrid", description="AstrID transient detection tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_seed(sub)
    _add_migrate(sub)
    _add_status(sub)
    from astrid import ingest_commands, registry_commands, reprocess_commands
    from astrid.ml import commands as ml_commands

    ml_commands.register(sub)
    ingest_commands.register(sub)
    reprocess_commands.register(sub)
    registry_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # alembic narrates every catalog open at INFO
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except AstridError as exc:
        print(f"astrid {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
