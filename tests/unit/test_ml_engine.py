"""Inference engine: seamless tiling, small/odd frames, device fallback, OOM batch halving, cache."""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from astrid.errors import ObservationError
from astrid.ml import engine as engine_mod
from astrid.ml.engine import InferenceEngine, get_engine, resolve_device
from astrid.ml.unet import UNet
from astrid.ml.weights import ModelCard, save_model

torch.set_num_threads(1)


def _model(depth: int = 2, base: int = 8) -> UNet:
    torch.manual_seed(0)
    model = UNet(base_channels=base, depth=depth)
    with torch.no_grad():  # non-trivial BatchNorm statistics, like a trained model
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _triplet(h: int, w: int, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    sci = rng.normal(100.0, 5.0, (h, w)).astype(np.float32)
    ref = rng.normal(100.0, 5.0, (h, w)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    for y, x in rng.uniform(0, [h, w], size=(6, 2)):
        sci += (200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)).astype(np.float32)
    return SimpleNamespace(science=sci, reference=ref, difference=sci - ref, name="t", wcs=None)


def test_tiled_equals_full_frame_on_non_multiple_size():
    model = _model()
    triplet = _triplet(300, 260)
    full = InferenceEngine(model, device="cpu", tile=512, overlap=48).probability(triplet)  # one tile
    tiled_engine = InferenceEngine(model, device="cpu", tile=128, overlap=48, batch_size=3)
    tiled = tiled_engine.probability(triplet)
    assert tiled.shape == (300, 260) and tiled.dtype == np.float32
    assert np.abs(tiled - full).max() < 1e-5
    assert np.isfinite(tiled).all() and tiled.min() >= 0 and tiled.max() <= 1


def test_default_overlap_covers_receptive_field():
    engine = InferenceEngine(_model(depth=3), device="cpu")
    assert engine.margin >= 51 and engine.tile == 512


def test_frame_smaller_than_tile():
    model = _model()
    triplet = _triplet(37, 50)
    p = InferenceEngine(model, device="cpu", tile=128, overlap=48).probability(triplet)
    q = InferenceEngine(model, device="cpu", tile=256, overlap=48).probability(triplet)
    assert p.shape == (37, 50)
    assert np.abs(p - q).max() < 1e-5


def test_bad_inputs_raise_observation_error():
    engine = InferenceEngine(_model(), device="cpu", tile=128, overlap=48)
    bad = SimpleNamespace(
        science=np.zeros((10, 10)), reference=np.zeros((10, 11)), difference=np.zeros((10, 10))
    )
    with pytest.raises(ObservationError, match="one shape"):
        engine.probability(bad)


def test_cuda_request_without_cuda_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="falling back to CPU"):
        assert resolve_device("cuda") == torch.device("cpu")
    with pytest.warns(RuntimeWarning):
        engine = InferenceEngine(_model(), device="cuda", tile=128, overlap=48)
    assert engine.device.type == "cpu" and engine.precision is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")


class _OOMAbove(torch.nn.Module):
    """Test double: behaves like ``inner`` but runs out of memory for batches larger than ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int, error: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        self.inner, self.limit, self.error, self.depth = inner, limit, error, inner.depth
        self.multiple = inner.multiple
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


@pytest.mark.parametrize("error", [RuntimeError, MemoryError, torch.OutOfMemoryError])
def test_oom_halves_batch_and_continues(error):
    model = _model()
    triplet = _triplet(300, 260)
    expected = InferenceEngine(model, device="cpu", tile=128, overlap=48, batch_size=8).probability(triplet)
    flaky = _OOMAbove(model, limit=2, error=error)
    engine = InferenceEngine(flaky, device="cpu", tile=128, overlap=48, batch_size=8)
    got = engine.probability(triplet)
    assert engine.batch_size == 2
    assert flaky.calls[:3] == [8, 4, 2]
    assert max(flaky.calls[3:]) <= 2
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_oom_on_single_tile_fails_the_observation():
    engine = InferenceEngine(_OOMAbove(_model(), limit=0), device="cpu", tile=128, overlap=48, batch_size=4)
    with pytest.raises(ObservationError, match=r"single 112x112 tile"):
        engine.probability(_triplet(64, 64))


def test_other_runtime_errors_propagate():
    class Broken(torch.nn.Module):
        depth, multiple = 2, 4

        def forward(self, x):
            raise RuntimeError("shape bug")

    with pytest.raises(RuntimeError, match="shape bug"):
        InferenceEngine(Broken(), device="cpu", tile=128, overlap=48).probability(_triplet(64, 64))


def test_get_engine_caches_per_process_and_reloads_new_weights(tmp_path):
    model = _model()
    card = ModelCard(name="tiny", version="1", architecture=model.config())
    save_model(model, card, tmp_path)
    get_engine.cache_clear()
    a = get_engine(tmp_path, device="cpu", batch_size=2)
    assert get_engine(tmp_path / "model.safetensors", device="auto", batch_size=2) is a
    assert get_engine(tmp_path, device="cpu", batch_size=4) is not a
    assert a.version == "tiny@1"
    stat = (tmp_path / "model.safetensors").stat()
    os.utime(tmp_path / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert get_engine(tmp_path, device="cpu", batch_size=2) is not a
    get_engine.cache_clear()


def test_default_path_uses_env(monkeypatch, tmp_path):
    model = _model()
    save_model(model, ModelCard(name="env", version="2", architecture=model.config()), tmp_path)
    monkeypatch.setenv("ASTRID_MODEL_PATH", str(tmp_path))
    engine_mod.get_engine.cache_clear()
    assert get_engine(device="cpu").version == "env@2"
    engine_mod.get_engine.cache_clear()
