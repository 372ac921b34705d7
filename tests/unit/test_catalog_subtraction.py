"""The catalog's subtraction queue (issue 20), on SQLite and on the local PostgreSQL: observations
without a difference image are claimed only by the subtraction step, never by inference, and
come back to the subtraction queue whatever happens to their claim."""

from __future__ import annotations

from datetime import timedelta

import pytest

from astrid.errors import CatalogError
from tests.unit.test_catalog import LEASE, T0, catalog, obs, pg_url  # noqa: F401 - fixtures


def _waiting(i: int):
    o = obs(i, meta={"awaiting": "subtraction", "user": {"night": "n1"}})
    o.difference_uri = None
    return o


def _seed(catalog) -> tuple[int, int]:  # noqa: F811
    (waiting,) = catalog.register([_waiting(1)], status="ingested")
    (ready,) = catalog.register([obs(2)])
    return waiting, ready


def test_inference_and_subtraction_claim_disjoint_rows(catalog):  # noqa: F811
    waiting, ready = _seed(catalog)
    assert [c.observation_id for c in catalog.claim(10, "infer", LEASE)] == [ready]
    (claim,) = catalog.claim_for_subtraction(10, "sub", LEASE)
    assert claim.observation_id == waiting and claim.difference_uri is None
    assert catalog.claim_for_subtraction(10, "other", LEASE) == []  # leased
    # a retried task gets its own claim back
    assert [c.observation_id for c in catalog.claim_for_subtraction(10, "sub", LEASE)] == [waiting]


def test_complete_subtraction_makes_it_claimable_by_inference(catalog):  # noqa: F811
    waiting, _ = _seed(catalog)
    catalog.claim(10, "infer", LEASE)
    catalog.claim_for_subtraction(10, "run-1", LEASE)
    with pytest.raises(CatalogError, match="claimed by run 'run-1'"):
        catalog.complete_subtraction(
            waiting, "run-2", difference_uri="d.fits", reference_uri="r.fits", meta={"subtraction": {}}
        )
    meta = {"subtraction": {"method": "alard-lupton", "star_chi2_median": 1.01}}
    catalog.complete_subtraction(
        waiting, "run-1", difference_uri="d.fits", reference_uri="ra.fits", meta=meta
    )
    row = catalog.get(waiting)
    assert row["status"] == "preprocessed" and row["difference_uri"] == "d.fits"
    assert row["reference_uri"] == "ra.fits" and row["lease_until"] is None
    assert row["meta"] == {"user": {"night": "n1"}, **meta}  # merged; 'awaiting' dropped
    # the same run again (a retried task) changes nothing, even once inference holds it
    (claim,) = catalog.claim(10, "run-1", LEASE)
    assert claim.observation_id == waiting and claim.difference_uri == "d.fits"
    catalog.complete_subtraction(waiting, "run-1", difference_uri="x.fits", reference_uri="y.fits", meta={})
    assert catalog.get(waiting)["difference_uri"] == "d.fits"


def test_released_expired_and_failed_subtraction_claims_stay_in_the_subtraction_queue(catalog):  # noqa: F811
    waiting, ready = _seed(catalog)
    assert [c.observation_id for c in catalog.claim(10, "infer-0", LEASE)] == [ready]
    catalog.claim_for_subtraction(10, "run-1", LEASE)
    assert catalog.release("run-1") == 1
    assert catalog.get(waiting)["status"] == "ingested"  # not 'preprocessed': it has no difference
    # a dead run's lease expires: a failed attempt, taken over by the next subtraction, not inference
    catalog.claim_for_subtraction(10, "dead", timedelta(seconds=1), now=T0)
    later = T0 + timedelta(minutes=5)
    assert catalog.claim(10, "infer", LEASE, now=later) == []
    assert [c.attempts for c in catalog.claim_for_subtraction(10, "next", LEASE, now=later)] == [1]
    catalog.fail(waiting, "next", "storage unreachable")
    assert catalog.claim(10, "infer-2", LEASE) == []
    assert [c.observation_id for c in catalog.claim_for_subtraction(10, "again", LEASE, max_attempts=3)] == [
        waiting
    ]
    catalog.reject(waiting, "again", "subtraction: NoOverlapError")
    row = catalog.get(waiting)
    assert row["status"] == "rejected" and "NoOverlapError" in row["rejection_reason"]
    assert catalog.claim_for_subtraction(10, "more", LEASE) == []


def test_reprocessing_skips_what_waits_for_its_subtraction(catalog):  # noqa: F811
    waiting, ready = _seed(catalog)
    assert [c.observation_id for c in catalog.reprocess_candidates("v2")] == [ready]
    catalog.claim_for_subtraction(10, "sub", LEASE)
    catalog.complete_subtraction(waiting, "sub", difference_uri="d.fits", reference_uri="r.fits", meta={})
    assert [c.observation_id for c in catalog.reprocess_candidates("v2")] == [waiting, ready]
