"""astrid.training's pure parts: the recipe by device (shipped on CUDA, bounded on CPU), the checked
overrides, the device fallback, and the dataset split against a real SQLite catalog."""

from __future__ import annotations

import pytest

from astrid.catalog import Catalog, NewObservation
from astrid.errors import ConfigError, ModelError
from astrid.ml.train import TrainConfig
from astrid.training import build_dataset, training_device, training_recipe

BOUNDS = {"cpu_epochs": 8, "cpu_observations": 80}


def test_cuda_trains_the_shipped_recipe_and_cpu_a_bounded_one():
    assert training_recipe("cuda", {}, **BOUNDS) == TrainConfig()
    cpu = training_recipe("cpu", None, **BOUNDS)
    assert (cpu.epochs, cpu.observations) == (8, 80)
    assert cpu.patches_per_epoch == TrainConfig().patches_per_epoch  # only the size is bounded
    # overrides win on either device, lists become the recipe's tuples
    tiny = training_recipe("cpu", {"epochs": 2, "mine_after": [1], "knobs": {"n_transients": 4}}, **BOUNDS)
    assert (tiny.epochs, tiny.mine_after, tiny.knobs) == (2, (1,), {"n_transients": 4})


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"epoch": 3}, "'epoch' is not a training setting"),
        ({"threads": 16}, "'threads' is not a training setting"),  # the worker's, not the recipe's
        ({"epochs": 0}, "'epochs' must be at least 1"),
        ({"epochs": 2.5}, "whole number"),
        ({"lr": "fast"}, "finite number"),
        ({"lr": float("nan")}, "finite number"),
        ({"epochs": True}, "finite number"),
        ({"mine_after": 4}, "must be a list"),
        ({"knobs": []}, "must be an object"),
        ("epochs=3", "recipe must be an object"),
    ],
)
def test_bad_recipes_are_refused_naming_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        training_recipe("cpu", overrides, **BOUNDS)


def test_cpu_is_the_fallback_when_cuda_is_missing():
    import torch

    assert training_device("cpu") == "cpu"
    assert training_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert training_device("cuda") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not one of auto, cpu, cuda"):
        training_device("tpu")


def test_the_validation_set_is_the_weekly_one_and_never_trained_on(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    catalog.migrate()
    with pytest.raises(ModelError, match="no labelled observations"):
        build_dataset(catalog, validation_size=2, labelled_limit=5)
    catalog.register(
        [
            NewObservation(name=f"l{i}", science_uri="s", reference_uri="r", truth_uri="t", labelled=True)
            for i in range(5)
        ]
        + [NewObservation(name="u", science_uri="s", reference_uri="r")]
    )
    dataset = build_dataset(catalog, validation_size=2, labelled_limit=2)
    assert [c["name"] for c in dataset["validation"]] == [c.name for c in catalog.labelled(2)] == ["l0", "l1"]
    assert [c["name"] for c in dataset["training"]] == ["l2", "l3"]
    assert build_dataset(catalog, validation_size=10, labelled_limit=5)["training"] == []
    catalog.dispose()
