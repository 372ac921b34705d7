"""A new serving model, after a promotion or a rollback: warm it, then reprocess recent observations.

The serving DAG (``astrid_serving_model``, scheduled on the ``astrid_serving_model`` Asset the
validation's promote/rollback tasks emit) runs :func:`warm_champion` and then reprocesses the last
hours of observations with the version it warmed (:func:`astrid.reprocess.run_reprocess`:
idempotent per (observation, model version), never claiming anything from the live queue).

Warming means what the first live run would otherwise do under its deadline: download the version
from the registry into this host's model cache, verify it (sha256, safetensors, architecture:
:meth:`astrid.registry.ModelRegistry.resolve`), and load it once into the inference engine
(:func:`astrid.ml.engine.get_engine`). A broken model fails here, in a DAG nobody waits on, and
its load time is measured (``astrid.model.load_time``). The version is read from the alias once
and pinned: the reprocessing uses exactly the model that was warmed, even if the alias moves again.
"""

from __future__ import annotations

import time
from typing import Any

from astrid.errors import ModelError


def warm_champion(
    registry: Any,
    *,
    device: str = "auto",
    batch_size: int = 8,
    metrics: Any = None,
    dag_id: str | None = None,
) -> dict[str, Any]:
    """Download, verify and load the current champion; returns its version, where its files are,
    the device it loaded on and the seconds it took."""
    from astrid.pipeline import load_detector
    from astrid.registry import CHAMPION

    version = registry.alias_version(CHAMPION)
    if version is None:
        raise ModelError(
            "no model version has the champion alias: nothing to warm (run the validation DAG, or "
            "`astrid register DIR` and promote it)"
        )
    started = time.perf_counter()
    loaded = load_detector(
        registry, version, device=device, batch_size=batch_size, metrics=metrics, dag_id=dag_id
    )
    return {
        "version": loaded.resolved.version,
        "path": str(loaded.resolved.path),
        "device": loaded.device,
        "seconds": round(time.perf_counter() - started, 3),
    }
