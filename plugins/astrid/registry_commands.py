"""``astrid register DIR``: put a trained model directory into the MLflow registry as ``challenger``.

The directory is checked before anything is uploaded (:func:`astrid.registry.verify_model_dir`):
both files present and real files, the card readable and for this model, the weights' sha256
equal to the card's, the weights valid safetensors that fit the card's architecture. A refusal
is one line on stderr and exit status 2; nothing reaches the registry. Weights already registered
(same sha256) are not uploaded again: the ``challenger`` alias moves to their version.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``register`` to the ``astrid`` command line."""
    p = subparsers.add_parser(
        "register",
        help="register a trained model directory in MLflow as the challenger",
        description="Checks the card and the weights, uploads model.safetensors + model_card.json as a new "
        "registry version and points the challenger alias at it. The weekly validation decides whether it "
        "serves.",
    )
    p.add_argument("directory", help="model directory written by `astrid train --output DIR`")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else the local store under AIRFLOW_HOME)",
    )
    p.add_argument("--description", default=None, help="registry version description")
    p.set_defaults(func=_run_register)


def _run_register(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from astrid.errors import ModelError
    from astrid.paths import default_mlflow_uri
    from astrid.registry import CHALLENGER, ModelRegistry, verify_model_dir

    directory = Path(args.directory)
    uri = args.tracking_uri or default_mlflow_uri()
    verify_model_dir(directory)  # before the registry is touched: a refusal creates nothing
    try:
        registry = ModelRegistry(uri)
        version, created = registry.register_checked(
            directory,
            alias=CHALLENGER,
            description=args.description or f"astrid register {directory.name}",
            tags={"source": "astrid register"},
        )
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the MLflow registry at {uri} refused the model: {first}") from exc
    what = "registered" if created else "already registered (same weights):"
    print(f"{what} {directory} as astrid-unet version {version}, now the {CHALLENGER}")
    return 0
