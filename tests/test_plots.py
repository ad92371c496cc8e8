"""The plots the pipeline renders itself: offline images with several series, same bytes for same numbers."""

from __future__ import annotations

from pathlib import Path

from tts_pipeline.plots import training_curves_figure, write_training_curves

HISTORY = [
    {"step": 5, "lr": 1e-4, "loss_gen": 2970.5, "mel_l1": 4.44},
    {"step": 10, "lr": 9.9e-5, "loss_gen": 1896.8, "mel_l1": 4.35, "val_loss": 1445.4, "val_mel_l1": 4.31},
    {"step": 15, "lr": 9.8e-5, "loss_gen": 1208.3, "mel_l1": 4.37},
    {"step": 20, "lr": 9.7e-5, "loss_gen": 850.4, "mel_l1": 4.16, "val_loss": 624.3, "val_mel_l1": 4.06},
]


def test_training_curves_show_validation_loss_and_learning_rate() -> None:
    import matplotlib.pyplot as plt

    fig = training_curves_figure(HISTORY, "Training: demo")
    try:
        loss, mel, lr = fig.axes
        lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss.lines}
        assert set(lines) == {"generator, train", "validation"}
        assert lines["validation"] == ([10.0, 20.0], [1445.4, 624.3])  # rows without a value are skipped
        assert loss.get_yscale() == "log"
        assert len(mel.lines) == 2
        assert lr.lines[0].get_ydata().tolist() == [1e-4, 9.9e-5, 9.8e-5, 9.7e-5]
    finally:
        plt.close(fig)


def test_same_history_same_png_bytes(tmp_path: Path) -> None:
    write_training_curves(tmp_path / "a.png", HISTORY, "Training: demo")
    write_training_curves(tmp_path / "b.png", HISTORY, "Training: demo")
    a = (tmp_path / "a.png").read_bytes()
    assert a.startswith(b"\x89PNG") and a == (tmp_path / "b.png").read_bytes()
    assert b"Software" not in a
    write_training_curves(tmp_path / "empty.png", [], "Training: demo")  # before any logged step
    assert (tmp_path / "empty.png").stat().st_size > 0
