"""Weekly validation against every candidate: which versions are scored, the decision, the table.

Real MLflow store (SQLite), a real catalog with seeded labelled observations, the shipped model and
a genuinely worse copy of it (output bias -40: finds nothing) registered as several versions.
"""

from __future__ import annotations

import pytest

from astrid.catalog import Catalog
from astrid.registry import CHALLENGER, CHAMPION, ModelRegistry
from astrid.storage import StorageRoot
from astrid.validation import (
    KEEP,
    PROMOTE,
    ROLLBACK,
    candidate_versions,
    comparison_table,
    decide,
    decide_from_scores,
    score_models,
)
from tests.model_helpers import blind_copy


def _s(version: str, f1: float, alias: str = "") -> dict:
    return {"version": version, "f1": f1, "alias": alias}


def test_decide_promotes_the_best_candidate_that_clears_floor_and_margin():
    champion = _s("1", 0.85)
    picked = decide(
        champion, [_s("2", 0.855, CHALLENGER), _s("3", 0.90), _s("4", 0.95)], min_f1=0.8, history=[]
    )
    assert (picked.action, picked.target_version) == (PROMOTE, "4")
    assert picked.reason.startswith("v4 F1 0.950 beats champion v1")
    # within the margin, or below the floor: nobody is promoted
    kept = decide(champion, [_s("2", 0.855, CHALLENGER)], min_f1=0.8, history=[])
    assert kept.action == KEEP
    low = decide(_s("1", 0.1), [_s("2", 0.5, CHALLENGER)], min_f1=0.8, history=["7"])
    assert (low.action, low.target_version) == (ROLLBACK, "7")
    # equals: the first listed (the challenger) wins
    tie = decide(champion, [_s("2", 0.9, CHALLENGER), _s("3", 0.9)], min_f1=0.8, history=[])
    assert tie.target_version == "2" and tie.reason.startswith("challenger v2")


def test_comparison_table_has_a_row_per_model_and_dashes_for_missing_figures():
    table = comparison_table(
        [("champion", {"version": "1", "f1": 0.9, "observations": 4}), ("candidate", {"version": "2"})]
    )
    lines = table.splitlines()
    assert lines[0].startswith("| model | version | F1 | precision |")
    assert lines[2].startswith("| champion | 1 | 0.900 |") and lines[2].endswith("| 4 |")
    assert lines[3].startswith("| candidate | 2 | – |")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from astrid.survey import seed_survey

    root = tmp_path_factory.mktemp("candidates")
    url = f"sqlite:///{root}/catalog.db"
    storage = StorageRoot.from_uri((root / "storage").as_uri())
    seed_survey(2, labelled=2, size=256, seed=82000, catalog_url=url, storage_root=storage, prefix="cand")
    catalog = Catalog(url)
    registry = ModelRegistry(f"sqlite:///{root}/mlflow.db")
    from astrid.paths import shipped_model_path

    blind = blind_copy(root)
    assert registry.register(shipped_model_path(), alias=CHAMPION) == "1"
    assert registry.register(blind) == "2"
    assert registry.register(shipped_model_path()) == "3"  # a good version nobody points at
    assert registry.register(blind, alias=CHALLENGER) == "4"
    registry.set_alias(CHAMPION, "2")  # a degraded champion
    yield {"catalog": catalog, "storage": storage, "registry": registry}
    catalog.dispose()


def test_candidates_are_the_challenger_then_the_newest_versions_each_once(world):
    registry = world["registry"]
    assert candidate_versions(registry, latest=2) == [(CHALLENGER, "4"), ("", "3"), ("", "1")]
    assert candidate_versions(registry, latest=0) == [(CHALLENGER, "4")]
    assert candidate_versions(registry, latest=10) == [(CHALLENGER, "4"), ("", "3"), ("", "1")]


def test_the_champion_is_scored_against_every_candidate_and_a_non_challenger_can_win(world):
    catalog, storage, registry = world["catalog"], world["storage"], world["registry"]
    claims = catalog.labelled(10)
    scores = score_models(
        registry,
        claims,
        storage,
        threshold=0.5,
        device="cpu",
        max_side=8192,
        dag_run_id="manual__cand",
        latest=2,
    )
    assert scores["champion"]["version"] == "2" and scores["champion"]["f1"] == 0.0  # the blind one
    assert [(c["alias"], c["version"]) for c in scores["candidates"]] == [
        (CHALLENGER, "4"),
        ("", "3"),
        ("", "1"),
    ]
    by_version = {c["version"]: c for c in scores["candidates"]}
    assert by_version["4"]["f1"] == 0.0 and by_version["3"]["f1"] > 0.5
    assert by_version["3"]["f1"] == by_version["1"]["f1"]  # the same weights score the same
    # every model judged on the same observations and transients
    assert {c["observations"] for c in [scores["champion"], *scores["candidates"]]} == {len(claims)}
    assert {c["truth"] for c in [scores["champion"], *scores["candidates"]]} == {scores["champion"]["truth"]}
    decision = decide_from_scores(scores, min_f1=0.5)
    assert (decision.action, decision.target_version) == (PROMOTE, "3")  # the first of the equal best
    # the table holds every model, and went to MLflow with the scores
    rows = [line for line in scores["table"].splitlines()[2:]]
    assert [r.split("|")[1:3] for r in rows] == [
        [" champion ", " 2 "],
        [" challenger ", " 4 "],
        [" candidate ", " 3 "],
        [" candidate ", " 1 "],
    ]
    run = registry.client.get_run(scores["comparison_run_id"])
    assert run.data.tags["airflow.run_id"] == "manual__cand"
    artifacts = {a.path for a in registry.client.list_artifacts(run.info.run_id)}
    assert artifacts == {"comparison.md", "scores.json"}
    import mlflow.artifacts

    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/comparison.md")
    assert text == scores["table"]
    names = {
        r.info.run_name
        for r in registry.client.search_runs(
            [registry.experiment_id("astrid-validation")], "tags.`airflow.run_id` = 'manual__cand'"
        )
    }
    assert names == {
        "validate-champion-v2",
        "validate-challenger-v4",
        "validate-candidate-v3",
        "validate-candidate-v1",
        "compare-manual__cand",
    }
