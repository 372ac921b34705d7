"""The training DAG end to end with ``dag.test()`` on a tiny recipe (CI budget: seconds).

Real Airflow (in-process task execution), a real SQLite catalog with seeded labelled observations,
real FITS files, a real MLflow store (SQLite + local artifacts), real training on CPU (a 4-channel,
depth-2 U-Net, 2 epochs of 32 patches: it checks the machinery, not the quality) and the shipped
model as the champion it is compared with.
"""

from __future__ import annotations

import pytest

from astrid.airflow.demo import task_output
from tests.dag_runner import inprocess_env, run_dag

SIZE = 128
TINY_RECIPE = {
    "seed": 5,
    "epochs": 2,
    "observations": 2,
    "size": 128,
    "patch": 32,
    "patches_per_epoch": 32,
    "batch_size": 16,
    "base_channels": 4,
    "depth": 2,
    "calibration_observations": 0,
    "mine_after": [],
}


@pytest.fixture(scope="module")
def world(airflow_db, tmp_path_factory):
    """4 labelled observations (2 to validate on, 2 to train on) in a private catalog + MLflow store."""
    import os

    from astrid.airflow.hooks import CatalogHook, ModelRegistryHook
    from astrid.survey import seed_survey

    root = tmp_path_factory.mktemp("astrid-training")
    with inprocess_env(root):
        seed_survey(
            4,
            labelled=4,
            size=SIZE,
            seed=91000,
            catalog_url=os.environ["ASTRID_CATALOG_URL"],
            storage_root=os.environ["ASTRID_STORAGE_ROOT"],
            prefix="train",
        )
        yield {"catalog": CatalogHook().get_conn(), "registry": ModelRegistryHook().get_conn()}


def test_training_dag_trains_evaluates_and_registers_a_challenger(world):
    registry = world["registry"]
    conf = {"validation_size": 2, "labelled": 2, "recipe": TINY_RECIPE}
    dag_run = run_dag("astrid_model_training", conf)
    assert str(dag_run.state) == "success"

    dataset = task_output(dag_run, "build_dataset")
    validation_ids = [c["observation_id"] for c in dataset["validation"]]
    training_ids = [c["observation_id"] for c in dataset["training"]]
    assert len(validation_ids) == 2 and len(training_ids) == 2
    assert not set(validation_ids) & set(training_ids)  # never trained on what it is judged on
    assert validation_ids == [c.observation_id for c in world["catalog"].labelled(2)]  # the weekly set

    candidate = task_output(dag_run, "train")
    assert candidate["device"] == "cpu" and candidate["epochs"] == 2
    assert len(candidate["labelled_observations"]) == 2
    # one loss value per epoch, logged at its step while training ran
    history = registry.client.get_metric_history(candidate["mlflow_run_id"], "loss")
    assert [m.step for m in history] == [1, 2]
    mlrun = registry.client.get_run(candidate["mlflow_run_id"])
    assert mlrun.data.params["epochs"] == "2" and mlrun.data.params["labelled_observations"] == "2"
    assert mlrun.data.tags["airflow.run_id"] == dag_run.run_id

    evaluation = task_output(dag_run, "evaluate")
    champion, trained = evaluation["champion"], evaluation["candidate"]
    assert champion["version"] == "1"  # the shipped model, bootstrapped as champion
    assert champion["observations"] == trained["observations"] == 2
    assert champion["truth"] == trained["truth"] > 0  # the same transients judged for both
    for key in ("f1", "precision", "recall", "false_per_mpix", "recall_by_snr"):
        assert key in trained and key in champion
    assert "| candidate |" in evaluation["table"] and "| champion | 1 |" in evaluation["table"]
    run_metrics = registry.client.get_run(candidate["mlflow_run_id"]).data.metrics
    assert run_metrics["f1"] == pytest.approx(trained["f1"])
    assert run_metrics["champion_f1"] == pytest.approx(champion["f1"])

    registered = task_output(dag_run, "register")
    assert registered["created"] is True and registered["alias"] == "challenger"
    version = registered["version"]
    assert registry.alias_version("challenger") == version != "1"
    assert registry.alias_version("champion") == "1"  # registering never changes what serves
    from astrid.ml.weights import load_model

    _, card = load_model(registry.resolve(version).path)
    assert card.metrics["validation"]["f1"] == pytest.approx(trained["f1"])
    assert card.metrics["validation_champion"]["version"] == "1"
    assert card.training["recipe"]["epochs"] == 2 and card.data["extra_observations"] == 2
    mv = registry.client.get_model_version("astrid-unet", version)
    assert mv.tags["training_run_id"] == candidate["mlflow_run_id"]
    assert mv.tags["sha256"] == card.sha256 == candidate["sha256"]

    assert [ti.try_number for ti in dag_run.get_task_instances()] == [1, 1, 1, 1]


def test_a_bad_recipe_fails_at_once_naming_the_field(world):
    dag_run = run_dag("astrid_model_training", {"validation_size": 2, "recipe": {"epoch": 3}})
    assert str(dag_run.state) == "failed"
    train = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "train")
    assert str(train.state) == "failed" and train.try_number == 1  # not retried: retrying cannot help
