"""The truth module on its own: the file round trip, the files it refuses, and the local SNR."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from astrid.imaging.truth import HOSTS, InjectedTransient, local_snr, read_truth, write_truth


def _truth() -> list[InjectedTransient]:
    return [
        InjectedTransient(x=10.25, y=3.0, flux=1234.5678901234, snr=7.123456789, host="blank", snr_local=6.9),
        InjectedTransient(x=0.0, y=511.999, flux=1e-3, snr=3.0, host="star", snr_local=None),
        InjectedTransient(x=99.5, y=42.0, flux=5e5, snr=49.0, host="galaxy", snr_local=40.25),
    ]


def test_write_then_read_gives_the_same_transients(tmp_path) -> None:
    truth = _truth()
    path = tmp_path / "a_truth.json"
    write_truth(truth, path)
    assert read_truth(path) == truth  # floats survive exactly (JSON repr), None stays None
    assert read_truth(str(path)) == truth
    data = json.loads(path.read_text())
    assert [d["host"] for d in data] == ["blank", "star", "galaxy"]
    assert set(data[0]) == {"x", "y", "flux", "snr", "host", "snr_local"}


def test_an_empty_truth_round_trips(tmp_path) -> None:
    write_truth([], tmp_path / "none.json")
    assert read_truth(tmp_path / "none.json") == []


def test_a_transients_object_and_old_files_without_local_snr_are_read(tmp_path) -> None:
    rows = [{"x": 1, "y": 2, "flux": 3, "snr": 4, "host": "star"}]
    (tmp_path / "obj.json").write_text(json.dumps({"transients": rows}))
    (tmp_path / "empty_obj.json").write_text(json.dumps({"something": "else"}))
    assert read_truth(tmp_path / "obj.json") == [InjectedTransient(1.0, 2.0, 3.0, 4.0, "star", None)]
    assert read_truth(tmp_path / "empty_obj.json") == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (json.dumps([{"x": 1, "y": 2, "flux": 3, "snr": 4, "host": "comet"}]), "comet"),
        (json.dumps("not a list"), "bad_truth.json: expected a JSON list"),
        (json.dumps({"transients": 5}), "bad_truth.json: expected a JSON list"),
        ("[{not json", ""),
    ],
)
def test_read_truth_refuses_what_is_not_a_truth_file(tmp_path, content: str, match: str) -> None:
    p = tmp_path / "bad_truth.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_truth(p)


def test_a_transient_without_a_position_is_refused(tmp_path) -> None:
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"y": 2, "flux": 3, "snr": 4, "host": "blank"}]))
    with pytest.raises(KeyError, match="x"):
        read_truth(p)


def test_a_missing_file_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_truth(tmp_path / "nowhere_truth.json")


def test_hosts_are_the_three_kinds_from_dict_accepts() -> None:
    assert HOSTS == ("blank", "star", "galaxy")
    for host in HOSTS:
        t = InjectedTransient.from_dict({"x": "1.5", "y": 2, "flux": 3, "snr": 4, "host": host})
        assert (t.x, t.host, t.snr_local) == (1.5, host, None)


def test_local_snr_is_the_optimal_snr_with_the_sources_own_photon_noise() -> None:
    # a Gaussian stamp (sum 1) on flat variance: without the source's noise the optimal SNR is
    # flux * sqrt(sum P^2) / sigma; the source's own noise lowers it, the more the brighter
    yy, xx = np.mgrid[-10:11, -10:11]
    stamp = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    stamp /= stamp.sum()
    sigma2, gain = 25.0, 2.0
    var = np.full(stamp.shape, sigma2)
    for flux in (50.0, 500.0, 5e4):
        no_source = flux * math.sqrt(float((stamp**2).sum()) / sigma2)
        expected = flux * math.sqrt(float((stamp**2 / (sigma2 + flux * stamp / gain)).sum()))
        got = local_snr(flux, stamp, var, gain)
        assert got == pytest.approx(expected, rel=1e-12)
        assert got < no_source
    # an infinite gain means no photon noise from the source: the two SNRs agree
    assert local_snr(500.0, stamp, var, math.inf) == pytest.approx(
        500.0 * math.sqrt((stamp**2).sum() / sigma2)
    )
    # negative stamp pixels (Lanczos ringing) add no variance
    ringing = stamp.copy()
    ringing[0, 0] = -1e-3
    assert local_snr(100.0, ringing, var, gain) == pytest.approx(
        100.0 * math.sqrt(float((ringing**2 / (sigma2 + np.maximum(100.0 * ringing, 0) / gain)).sum()))
    )
