"""Pre-flight: a run is skipped, with the reason, when the host is over a configured limit."""

from __future__ import annotations

from astrid.config import InferenceSchedulingConfig
from astrid.preflight import check


def test_within_limits_runs():
    report = check(InferenceSchedulingConfig(), memory_percent=40.0, load_per_cpu=0.5, gpu_percent=10.0)
    assert report.ok and report.reasons == []


def test_each_limit_skips_and_names_the_variable():
    config = InferenceSchedulingConfig(
        max_memory_percent=80.0, max_load_per_cpu=2.0, max_gpu_memory_percent=90.0
    )
    report = check(config, memory_percent=85.0, load_per_cpu=3.5, gpu_percent=97.0)
    assert not report.ok
    text = " ".join(report.reasons)
    for variable in (
        "ASTRID_INFERENCE_MAX_MEMORY_PERCENT",
        "ASTRID_INFERENCE_MAX_LOAD_PER_CPU",
        "ASTRID_INFERENCE_MAX_GPU_MEMORY_PERCENT",
    ):
        assert variable in text
    assert "85%" in text and "3.50" in text and "97%" in text


def test_no_gpu_is_not_a_reason_to_skip():
    report = check(InferenceSchedulingConfig(), memory_percent=10.0, load_per_cpu=0.1, gpu_percent=None)
    assert report.ok and report.gpu_memory_percent is None


def test_real_readings_are_taken_when_not_given():
    report = check(InferenceSchedulingConfig())
    assert 0.0 < report.memory_percent <= 100.0 and report.load_per_cpu >= 0.0
