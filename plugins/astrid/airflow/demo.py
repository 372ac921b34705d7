"""`make demo`: seed a synthetic night and run the three DAGs once each, in-process (dag.test).

Everything is embedded: SQLite catalog + Airflow metadata under AIRFLOW_HOME, observations on
local disk, a local MLflow store. The summary at the end says what each DAG did and checks the
detections against the injected truth, so a person can see the product work in one command.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from typing import Any

from astrid.dag_kinds import KINDS
from astrid.paths import REPO_ROOT


def load_dag(dag_id: str) -> Any:
    """The DAG ``dags/<dag_id>.py`` defines, parsed afresh (environment changes since apply)."""
    path = REPO_ROOT / "dags" / f"{dag_id}.py"
    spec = importlib.util.spec_from_file_location(f"_astrid_dag_{dag_id}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    return next(v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == dag_id)


def run_in_process(
    dag: Any, conf: dict[str, Any] | None = None, *, logical_date: Any = None
) -> tuple[Any, float]:
    """Run a DAG end to end with dag.test() in this process; returns (dag_run, seconds).

    The one in-process runner: the demo and the tests (``tests/dag_runner.py``) both use it.
    """
    # Airflow 3.3.2's dag.test() cannot finish a run of a DAG with Deadline Alerts: on success
    # DagRun.update_state looks the alerts up by id, but dag.test passes them serialised
    # (AttributeError: 'dict' object has no attribute 'hex'). Deadlines are exercised for real
    # under `airflow standalone` (tests/integration); in-process runs go without them.
    dag.deadline = None
    dates = {"logical_date": logical_date, "run_after": logical_date} if logical_date is not None else {}
    started = time.perf_counter()
    dag_run = dag.test(run_conf=conf or {}, **dates)
    return dag_run, time.perf_counter() - started


def task_output(dag_run: Any, task_id: str, map_index: int = -1) -> Any:
    for ti in dag_run.get_task_instances():
        if ti.task_id == task_id and ti.map_index == map_index:
            return ti.xcom_pull(task_ids=task_id, map_indexes=map_index)
    return None


def truth_recall(catalog: Any, storage: Any) -> tuple[int, int]:
    """(matched, injected) over every inferred observation that kept its truth file, matched as the
    evaluation matches (:func:`astrid.ml.scoring.match_detections`: one to one, within 3 px)."""
    from astrid.imaging.truth import read_truth
    from astrid.ml.scoring import match_detections

    matched = injected = 0
    for det_obs in catalog.observations(status="inferred"):
        truth_uri = det_obs.get("truth_uri") or det_obs["science_uri"].replace("_sci.fits", "_truth.json")
        try:
            truth = read_truth(storage.resolve(truth_uri))
        except Exception:
            continue
        found = catalog.detections(observation_id=det_obs["id"])
        injected += len(truth)
        matched += sum(match_detections(found, truth).truth_matched)
    return matched, injected


def main() -> int:
    # Task logs go to files under AIRFLOW_HOME/logs; the terminal shows the summary.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("airflow", "alembic", "mlflow", "great_expectations", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    size = int(os.environ.get("ASTRID_DEMO_SIZE", "2048"))
    count = int(os.environ.get("ASTRID_DEMO_OBSERVATIONS", "16"))
    labelled = int(os.environ.get("ASTRID_DEMO_LABELLED", "4"))

    from astrid.airflow.hooks import CatalogHook, ObservationStorageHook
    from astrid.survey import seed_survey

    # importing airflow re-enables its own DeprecationWarnings; the demo's reader cannot act on them
    warnings.filterwarnings("ignore")

    print(f"AstrID demo — AIRFLOW_HOME={os.environ.get('AIRFLOW_HOME')}")
    t0 = time.perf_counter()
    seeded = seed_survey(
        count,
        labelled=labelled,
        size=size,
        seed=int(time.time()) % 100000 * 100,
        catalog_url=CatalogHook().url,
        storage_root=ObservationStorageHook().get_conn(),
        prefix="demo",
        progress=True,
    )
    print(
        f"seeded {len(seeded.observation_ids)} observations of {size}x{size} ({labelled} labelled) "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    rows = []
    confs = {"realtime": {"max_observations": 10}, "batch": {}, "validation": {"dataset_size": labelled}}
    for dag_id, conf in ((KINDS[kind].dag_id, conf) for kind, conf in confs.items()):
        print(f"running {dag_id} ...", flush=True)
        dag_run, seconds = run_in_process(load_dag(dag_id), conf)
        out = task_output(dag_run, "report") or task_output(dag_run, "score_models") or {}
        rows.append((dag_id, dag_run.state, seconds, out))

    catalog = CatalogHook().get_conn()
    storage = ObservationStorageHook().get_conn()
    matched, injected = truth_recall(catalog, storage)
    print("\n=== AstrID demo summary ===")
    for dag_id, state, seconds, out in rows:
        if "processed_count" in out:
            detail = (
                f"{out['processed_count']} inferred, {out['failed_count']} failed, "
                f"{out['rejected_count']} rejected, {out['detections_found']} detections, "
                f"inference {out['processing_time']:.1f} s, success rate {out['success_rate']:.2f}"
            )
        elif "champion" in out:
            c = out["champion"]
            detail = (
                f"champion v{c['version']}: F1 {c['f1']:.3f}, precision {c['precision']:.3f}, "
                f"recall {c['recall']:.3f}, {c['false_per_mpix']:.2f} false/Mpix"
            )
        else:
            detail = "no output (see the task logs)"
        print(f"{dag_id:28s} {state!s:8s} {seconds:6.1f} s  {detail}")
    print(f"catalog status counts: {catalog.status_counts()}")
    if injected:
        print(f"injected transients recovered (within 3 px): {matched}/{injected} = {matched / injected:.1%}")
    failed = [r for r in rows if str(r[1]) != "success"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
