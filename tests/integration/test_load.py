"""A compressed day on a real scheduler: ``airflow standalone`` (LocalExecutor) with the metadata DB
and the catalog on PostgreSQL, 12 realtime runs plus the nightly batch, new observations arriving
throughout (bench/load.py runs the full 96 + 1 and records the figures in docs/benchmarks.md).

What it proves (``bench.load.verify``):

* zero lost: every registered observation ends inferred (or rejected with its reason); none is left
  preprocessed, claimed or failed;
* zero duplicated: the claim lists of all 13 runs are disjoint and cover every observation, each
  observation's detections were written only by the run that claimed it, ``inference_runs`` has one
  row per run and its claimed counts add up to the observations;
* realtime and batch claiming from the same catalog at the same moment never overlap: the batch
  and a realtime run are created in the same instant over a backlog larger than the batch's limit,
  both take their full share, and the shares are disjoint;
* every run inside its deadline: end − queued under 10 min (realtime) / 2 h (batch), and Airflow's
  own ``deadline`` table records no missed deadline.

Time is compressed by creating realtime runs back to back through the REST API (two queued or
running at a time), not by faking the scheduler: see bench/load.py.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.standalone, pytest.mark.postgres, pytest.mark.slow]

REALTIME_RUNS = 12


def test_a_compressed_day_loses_nothing_duplicates_nothing_and_meets_every_deadline():
    from tests.catalog_helpers import postgres_unavailable

    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    from bench.load import DayPlan, run_day

    plan = DayPlan(
        realtime_runs=REALTIME_RUNS,
        arrival_interval=5.0,
        batch_backlog=40,
        batch_max_observations=30,
        timeout=360,
    )
    _result, problems, fig = run_day(plan, progress=print)
    print(fig)
    assert problems == []
    assert (fig["realtime_runs"], fig["batch_runs"]) == (REALTIME_RUNS, 1)
    assert fig["inferred"] + fig["rejected"] == fig["observations"] > REALTIME_RUNS
    # the batch and the realtime run created with it both took their full share of the backlog
    concurrent = fig["concurrent_claim"]
    assert (concurrent["batch_claimed"], concurrent["realtime_claimed"]) == (30, 10), concurrent
    assert fig["queued_to_end_s_max"] < 600
