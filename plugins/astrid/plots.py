"""The one frame of the report figures (recall and efficiency versus SNR in ``astrid evaluate``,
the validation review): a 6.4 × 4 in, 110 dpi figure on the Agg backend (no display in workers),
finished with a grid and a lower-right legend, saved, and always closed (an open pyplot figure
is never freed in a long-lived worker)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["report_figure"]


@contextmanager
def report_figure(path: Any, *, legend_fontsize: float | None = None) -> Iterator[Any]:
    """Yield the axes to draw on; on a clean exit add the grid and legend and save to ``path``
    (anything ``savefig`` takes); the figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    try:
        yield ax
        ax.grid(alpha=0.3)
        if legend_fontsize is None:
            ax.legend(loc="lower right")
        else:
            ax.legend(loc="lower right", fontsize=legend_fontsize)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
