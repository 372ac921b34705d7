"""astrid.quality: the GX data-quality gate, against real Great Expectations (one gate per module)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrid.errors import AstridError, ConfigError
from astrid.imaging.fits import Triplet
from astrid.quality import (
    DEFAULT_SUITE_PATH,
    PROFILE_COLUMNS,
    QualityGate,
    QualityResult,
    check_triplet,
    load_suite_config,
    observation_profile,
)

SIZE = 128


def tan_header(size: int = SIZE, scale_arcsec: float = 0.2) -> fits.Header:
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = 150.1, 2.2
    header["CRPIX1"], header["CRPIX2"] = size / 2, size / 2
    header["CDELT1"], header["CDELT2"] = -scale_arcsec / 3600, scale_arcsec / 3600
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    return header


def make_triplet(name: str = "good", *, seed: int = 0, size: int = SIZE, **cards: object) -> Triplet:
    """A clean 128x128 observation: sky 100 +- 5, TAN WCS, EXPTIME 30 s, FWHM 0.8" at 0.2"/px = 4 px.

    ``cards`` set header keywords; a value of ``None`` removes the keyword.
    """
    rng = np.random.default_rng(seed)
    reference = (100.0 + rng.normal(0.0, 5.0, (size, size))).astype(np.float32)
    science = (reference + rng.normal(0.0, 5.0, (size, size))).astype(np.float32)
    science[size // 3, size // 2] += 400.0  # a transient
    header = tan_header(size)
    header["EXPTIME"] = 30.0
    header["FWHM"] = 0.8
    header["PIXSCALE"] = 0.2
    header["SATURATE"] = 60000.0
    for key, value in cards.items():
        if value is None:
            header.remove(key, ignore_missing=True)
        else:
            header[key] = value
    return Triplet(science, reference, science - reference, header, WCS(header), name)


@pytest.fixture(scope="module")
def gate() -> QualityGate:
    return QualityGate().build()


# --- failure modes: (builder, expected failure text) --------------------------------------------


def shape_mismatch() -> Triplet:
    t = make_triplet("shape")
    t.reference = t.reference[:, : SIZE - 8]
    return t


def nan_dominated() -> Triplet:
    t = make_triplet("nans")
    t.science[:76] = np.nan  # 76 of 128 rows: 40.6% finite
    t.difference = t.science - t.reference
    return t


def missing_wcs() -> Triplet:
    t = make_triplet("nowcs")
    t.wcs = None
    return t


def saturated() -> Triplet:
    t = make_triplet("saturated")
    t.science[:20, :] = 65000.0  # 20/128 = 15.6% of the pixels
    t.difference = t.science - t.reference
    return t


FAILURES = {
    "shape mismatch": (
        shape_mismatch,
        "expect_column_values_to_be_in_set(shapes_match, in [True]): got False",
    ),
    "nan dominated": (
        nan_dominated,
        "expect_column_values_to_be_between(finite_fraction, min 0.9): got 0.40625",
    ),
    "missing wcs": (missing_wcs, "expect_column_values_to_be_in_set(has_wcs, in [True]): got False"),
    "exptime zero": (
        lambda: make_triplet("exp0", EXPTIME=0.0),
        "expect_column_values_to_be_between(exptime, min 0 exclusive): got 0.0",
    ),
    "exptime missing": (
        lambda: make_triplet("expnone", EXPTIME=None),
        "expect_column_values_to_not_be_null(exptime): got NaN",
    ),
    "absurd fwhm": (
        lambda: make_triplet("blurry", FWHMPIX=45.0),
        "expect_column_values_to_be_between(fwhm_px, min 1, max 20): got 45.0",
    ),
    "fwhm missing": (
        lambda: make_triplet("noseeing", FWHM=None),
        "expect_column_values_to_not_be_null(fwhm_px): got NaN",
    ),
    "saturated": (saturated, "expect_column_values_to_be_between(saturated_fraction, max 0.05): got 0.15625"),
    "tiny": (
        lambda: make_triplet("tiny", size=48),
        "expect_column_values_to_be_between(height, min 64): got 48",
    ),
}


def test_good_triplet_passes(gate: QualityGate) -> None:
    result = check_triplet(make_triplet(), gate)
    assert result == QualityResult(name="good", passed=True, failures=[], warnings=[])


@pytest.mark.parametrize("mode", list(FAILURES))
def test_failure_mode_is_rejected_naming_the_expectation(gate: QualityGate, mode: str) -> None:
    build, expected = FAILURES[mode]
    result = check_triplet(build(), gate)
    assert not result.passed
    assert expected in result.failures, result.failures


def test_missing_wcs_also_fails_wcs_valid(gate: QualityGate) -> None:
    failures = check_triplet(missing_wcs(), gate).failures
    assert "expect_column_values_to_be_in_set(wcs_valid, in [True]): got False" in failures


def test_non_celestial_wcs_is_invalid(gate: QualityGate) -> None:
    t = make_triplet("linear")
    t.wcs = WCS(naxis=2)  # pixel-only, no sky
    profile = observation_profile(t)
    assert profile["has_wcs"] and not profile["wcs_valid"]
    assert gate.validate([profile])[0].failures == [
        "expect_column_values_to_be_in_set(wcs_valid, in [True]): got False"
    ]


def test_mixed_batch_returns_results_in_input_order(gate: QualityGate) -> None:
    triplets = [
        make_triplet("a"),
        make_triplet("b", EXPTIME=0.0),
        make_triplet("c", seed=3),
        missing_wcs(),
        make_triplet("a", FWHMPIX=0.5),  # duplicate name: rows are matched by position, not name
    ]
    results = gate.validate([observation_profile(t) for t in triplets])
    assert [r.name for r in results] == ["a", "b", "c", "nowcs", "a"]
    assert [r.passed for r in results] == [True, False, True, False, False]
    assert results[1].failures == ["expect_column_values_to_be_between(exptime, min 0 exclusive): got 0.0"]
    assert results[4].failures == ["expect_column_values_to_be_between(fwhm_px, min 1, max 20): got 0.5"]
    assert len(results[3].failures) == 2  # has_wcs and wcs_valid, in suite order
    assert "has_wcs" in results[3].failures[0] and "wcs_valid" in results[3].failures[1]


def test_empty_batch_needs_no_gx() -> None:
    assert QualityGate().validate([]) == []


def test_suite_json_loads_and_contains_every_expectation(gate: QualityGate) -> None:
    raw = json.loads(DEFAULT_SUITE_PATH.read_text())
    pairs = {(e["type"], e["kwargs"]["column"]) for e in raw["expectations"]}
    assert pairs == {
        ("expect_column_values_to_be_in_set", "shapes_match"),
        ("expect_column_values_to_be_between", "height"),
        ("expect_column_values_to_be_between", "width"),
        ("expect_column_values_to_be_between", "finite_fraction"),
        ("expect_column_values_to_be_in_set", "has_wcs"),
        ("expect_column_values_to_be_in_set", "wcs_valid"),
        ("expect_column_values_to_not_be_null", "exptime"),
        ("expect_column_values_to_be_between", "exptime"),
        ("expect_column_values_to_not_be_null", "fwhm_px"),
        ("expect_column_values_to_be_between", "fwhm_px"),
        ("expect_column_values_to_not_be_null", "diff_noise"),
        ("expect_column_values_to_be_between", "diff_noise"),
        ("expect_column_values_to_be_between", "saturated_fraction"),
        ("expect_column_values_to_be_between", "dynamic_range"),
    }
    assert all(e["kwargs"]["column"] in PROFILE_COLUMNS for e in raw["expectations"])
    # every entry survived into the GX suite (GX silently drops invalid dict entries)
    assert len(gate._suite.expectations) == len(raw["expectations"])
    by_column = {(e["type"], e["kwargs"]["column"]): e["kwargs"] for e in raw["expectations"]}
    assert by_column[("expect_column_values_to_be_between", "finite_fraction")]["min_value"] == 0.9
    assert by_column[("expect_column_values_to_be_between", "exptime")] == {
        "column": "exptime",
        "min_value": 0,
        "strict_min": True,
    }


def test_thresholds_can_be_overridden() -> None:
    strict = QualityGate(overrides={"fwhm_px": {"max_value": 3}, "finite_fraction": {"min_value": 0.5}})
    results = strict.validate([observation_profile(make_triplet()), observation_profile(nan_dominated())])
    assert results[0].failures == ["expect_column_values_to_be_between(fwhm_px, min 1, max 3): got 4.0"]
    assert results[1].failures == [
        "expect_column_values_to_be_between(finite_fraction, min 0.5): got 0.40625",
        "expect_column_values_to_be_between(fwhm_px, min 1, max 3): got 4.0",
    ]
    # explicit form for a column with several expectations
    config = load_suite_config(overrides={"expect_column_values_to_be_between:exptime": {"min_value": 10}})
    exptime = [e for e in config["expectations"] if e["kwargs"]["column"] == "exptime"]
    assert exptime[1]["kwargs"]["min_value"] == 10
    # the file itself is untouched
    assert load_suite_config()["expectations"] != config["expectations"]


def test_bad_override_and_bad_suite_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="matches 0 expectations"):
        QualityGate(overrides={"no_such_column": {"max_value": 1}})
    suite = json.loads(DEFAULT_SUITE_PATH.read_text())
    suite["expectations"].append(
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "seeing"}}
    )
    (tmp_path / "unknown_column.json").write_text(json.dumps(suite))
    with pytest.raises(ConfigError, match="unknown profile column"):
        QualityGate(tmp_path / "unknown_column.json")
    suite["expectations"][-1] = {
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": "exptime", "min_vlaue": 1},  # typo: GX would silently drop it from a dict
    }
    (tmp_path / "typo.json").write_text(json.dumps(suite))
    gate = QualityGate(tmp_path / "typo.json")  # JSON-level checks pass; GX schema check on build
    with pytest.raises(ConfigError, match=r"expectation #14 .*is invalid"):
        gate.build()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        QualityGate(tmp_path / "broken.json")


def test_warning_severity_is_reported_but_does_not_reject(tmp_path: Path) -> None:
    suite = json.loads(DEFAULT_SUITE_PATH.read_text())
    for entry in suite["expectations"]:
        if entry["kwargs"]["column"] == "saturated_fraction":
            entry["severity"] = "warning"
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    result = check_triplet(saturated(), QualityGate(tmp_path / "suite.json"))
    assert result.passed and result.failures == []
    assert result.warnings == [
        "expect_column_values_to_be_between(saturated_fraction, max 0.05): got 0.15625"
    ]


def test_gate_survives_another_gx_context_and_is_quiet(
    gate: QualityGate, capfd: pytest.CaptureFixture
) -> None:
    import great_expectations as gx

    gx.get_context(mode="ephemeral")  # someone else's context becomes GX's "current" one
    capfd.readouterr()
    assert not check_triplet(make_triplet("x", EXPTIME=0.0), gate).passed
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in err + out  # tqdm progress bars are off
    assert logging.getLogger("great_expectations").getEffectiveLevel() >= logging.WARNING


def test_shared_gate_is_built_once_per_process() -> None:
    assert QualityGate.shared() is QualityGate.shared()


# --- profile -------------------------------------------------------------------------------------


def test_profile_is_flat_json_and_has_every_column() -> None:
    profile = observation_profile(make_triplet())
    assert set(PROFILE_COLUMNS) <= set(profile)
    json.dumps(profile)  # XCom/catalog friendly
    assert profile["height"] == profile["width"] == SIZE
    assert profile["exptime"] == 30.0 and profile["fwhm_px"] == pytest.approx(4.0)
    assert profile["finite_fraction"] == 1.0 and profile["saturated_fraction"] == 0.0
    assert profile["saturate_present"] and profile["saturate_level"] == 60000.0
    # the difference is science minus its own reference: its noise is the science noise (5)
    assert profile["diff_noise"] == pytest.approx(5.0, rel=0.1)
    assert abs(profile["diff_background"]) < 1.0
    assert 0.0 < profile["dynamic_range"] < 3.0


def test_fwhm_header_convention() -> None:
    assert observation_profile(make_triplet(FWHMPIX=3.5))["fwhm_px"] == 3.5  # FWHMPIX wins
    assert observation_profile(make_triplet(FWHM=1.2, PIXSCALE=0.4))["fwhm_px"] == pytest.approx(3.0)
    # no PIXSCALE: the WCS pixel scale (0.2"/px) converts the arcsec FWHM
    assert observation_profile(make_triplet(FWHM=1.0, PIXSCALE=None))["fwhm_px"] == pytest.approx(5.0)
    no_scale = make_triplet(PIXSCALE=None)
    no_scale.wcs = None
    assert math.isnan(observation_profile(no_scale)["fwhm_px"])


def test_finite_fraction_prefers_the_loaders_pre_repair_value() -> None:
    t = make_triplet()
    t.finite_fraction = 0.42  # e.g. the loader already replaced NaNs
    assert observation_profile(t)["finite_fraction"] == 0.42


def test_saturation_without_saturate_keyword_uses_the_clipped_plateau() -> None:
    t = saturated()
    t.header.remove("SATURATE")
    profile = observation_profile(t)
    assert not profile["saturate_present"] and math.isnan(profile["saturate_level"])
    assert profile["saturated_fraction"] == pytest.approx(20 / SIZE)
    assert observation_profile(make_triplet(SATURATE=None))["saturated_fraction"] == 0.0


def test_constant_difference_has_no_noise(gate: QualityGate) -> None:
    t = make_triplet("flat")
    t.difference = np.zeros_like(t.science)
    assert gate.validate([observation_profile(t)])[0].failures == [
        "expect_column_values_to_be_between(diff_noise, min 0 exclusive): got 0.0"
    ]


def test_batch_level_expectation_fails_every_row(tmp_path: Path) -> None:
    suite = json.loads(DEFAULT_SUITE_PATH.read_text())
    suite["expectations"].append({"type": "expect_table_row_count_to_be_between", "kwargs": {"max_value": 1}})
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    results = QualityGate(tmp_path / "suite.json").validate(
        [observation_profile(make_triplet("a")), observation_profile(make_triplet("b"))]
    )
    expected = "expect_table_row_count_to_be_between(max 1): batch-level check failed (observed 2)"
    assert [r.failures for r in results] == [[expected], [expected]]


def test_unevaluable_profile_raises_instead_of_rejecting(gate: QualityGate) -> None:
    profile = observation_profile(make_triplet())
    profile["exptime"] = "thirty"  # not what observation_profile produces: a bug, fail loudly
    with pytest.raises(AstridError, match=r"exptime, min 0 exclusive\) could not be evaluated"):
        gate.validate([profile])
    del profile["exptime"]
    with pytest.raises(AstridError, match=r"lacks \['exptime'\]"):
        gate.validate([profile])
