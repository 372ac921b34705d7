"""The report figures' shared frame: saved when drawing succeeds, always closed."""

from __future__ import annotations

import pytest

from astrid.plots import report_figure


def test_the_figure_is_saved_with_its_legend_and_closed(tmp_path) -> None:
    from matplotlib import pyplot as plt

    before = set(plt.get_fignums())
    path = tmp_path / "f.png"
    with report_figure(path, legend_fontsize=8) as ax:
        ax.plot([0, 1], [0, 1], label="a line")
        fig = ax.figure
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tuple(fig.get_size_inches()) == (6.4, 4.0) and fig.dpi == 110
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a line"]
    assert legend.get_texts()[0].get_fontsize() == 8
    assert set(plt.get_fignums()) == before


def test_a_failed_drawing_saves_nothing_and_still_closes_the_figure(tmp_path) -> None:
    from matplotlib import pyplot as plt

    before = set(plt.get_fignums())
    path = tmp_path / "g.png"
    with pytest.raises(RuntimeError, match="boom"), report_figure(path):
        raise RuntimeError("boom")
    assert not path.exists()
    assert set(plt.get_fignums()) == before
