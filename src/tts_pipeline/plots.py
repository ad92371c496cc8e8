"""Plots the pipeline renders itself, as PNG images `dvc plots show` embeds as they are.

Why images and not DVC's Vega-Lite templates: DVC's HTML loads its chart library from a CDN,
so a `.tsv` plot is a blank box offline (a GPU box without a browser, a laptop on a train).
An image needs nothing, and it is the same bytes for the same numbers (Agg renders
deterministically; the PNG carries no date), so a re-run that changes nothing keeps git clean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_bytes

#: (panel title, [(column, label), ...], log scale) of the training curves image.
TRAINING_PANELS: tuple[tuple[str, tuple[tuple[str, str], ...], bool], ...] = (
    ("loss (log scale)", (("loss_gen", "generator, train"), ("val_loss", "validation")), True),
    ("mel L1", (("mel_l1", "train"), ("val_mel_l1", "validation")), False),
    ("learning rate", (("lr", "learning rate"),), False),
)


def _points(history: Sequence[dict[str, Any]], column: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that have a finite value in `column`."""
    xs, ys = [], []
    for row in history:
        value = row.get(column)
        if value is None or row.get("step") is None:
            continue
        value = float(value)
        if math.isfinite(value):
            xs.append(float(row["step"]))
            ys.append(value)
    return xs, ys


def training_curves_figure(history: Sequence[dict[str, Any]], title: str = "") -> Any:
    """A matplotlib figure: one row of panels (losses, mel L1, learning rate) over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(4.2 * len(TRAINING_PANELS), 3.2))
    for ax, (panel, series, log_scale) in zip(axes, TRAINING_PANELS, strict=True):
        drawn, values = 0, []
        for column, label in series:
            xs, ys = _points(history, column)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
                drawn, values = drawn + 1, values + ys
        if log_scale and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn > 1:
            ax.legend(fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_training_curves(path: str | Path, history: Sequence[dict[str, Any]], title: str = "") -> None:
    """`training_curves_figure` as a PNG without a software/date stamp."""
    import io

    import matplotlib.pyplot as plt

    fig = training_curves_figure(history, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
