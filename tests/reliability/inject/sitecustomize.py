"""Fault injection for tests/reliability: put on the PYTHONPATH of a test's `airflow standalone` only.

With ``RELIABILITY_SIGKILL_MARKER`` set to a file that does not exist yet, the first process that
finishes one observation inside :func:`astrid.pipeline.run_inference` (the ``infer`` task) writes
the marker and SIGKILLs itself: a worker dying mid-batch, for real, after some of its observations
were committed and before the others. Every other process, and every later attempt (the marker
exists by then), runs untouched. Without the variable this module does nothing.
"""

from __future__ import annotations

import os
import sys

_MARKER = os.environ.get("RELIABILITY_SIGKILL_MARKER")


def _patch(module) -> None:
    import signal

    original = module.run_inference

    def run_inference(claims, **kwargs):
        if os.path.exists(_MARKER):
            return original(claims, **kwargs)
        downstream = kwargs.get("on_observation")

        def on_observation(claim, detections):
            if downstream is not None:
                downstream(claim, detections)
            with open(_MARKER, "x") as fh:
                fh.write(f"{os.getpid()} {claim.observation_id}\n")
            os.kill(os.getpid(), signal.SIGKILL)

        kwargs["on_observation"] = on_observation
        return original(claims, **kwargs)

    module.run_inference = run_inference


class _PatchPipelineOnImport:
    """A meta-path finder that lets ``astrid.pipeline`` load normally, then wraps it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "astrid.pipeline":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _MARKER:
    sys.meta_path.insert(0, _PatchPipelineOnImport())
