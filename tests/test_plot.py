"""plot.py: metrics.jsonl of SFT and RL runs -> a PNG with titled panels, step ticks, a legend, baselines.
matplotlib is optional: the tests that draw skip without it; the missing-package message is tested anyway."""
import json
import sys

import pytest

import plot


def write_run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def sft_rows():  # sft.py logs training rows and, every N steps, separate val_loss rows
    rows = [{"step": 0, "val_loss": 2.0}]
    for s in range(1, 31):
        rows.append({"step": s, "epoch": 0, "loss": 2.0 - s / 20, "lr": 1e-3, "grad_norm": 1.0})
        if s % 10 == 0:
            rows.append({"step": s, "val_loss": 2.0 - s / 25})
    return rows


def rl_rows(up: float):
    return [{"step": s, "reward": 0.5 + up * s, "kl": 0.0, **({"val_accuracy": 0.4 + up * s} if s % 5 == 0 else {})}
            for s in range(1, 21)]


def test_titles_and_series():
    assert plot.describe("val_accuracy") == ("Validation accuracy", "accuracy (mean over tasks)")
    assert plot.describe("val/gsm8k")[0] == "Validation accuracy: gsm8k"
    assert plot.describe("reward/sudoku/total")[0] == "Rollout reward: sudoku, total"
    assert plot.describe("my_new_metric")[0] == "My new metric"
    assert plot.series(sft_rows(), "val_loss") == ([0, 10, 20, 30], [2.0, 1.6, 1.2, 0.8])
    assert plot.series(sft_rows(), "loss")[0] == list(range(1, 31))
    assert plot.series([{"step": 1, "x": float("nan")}, {"step": 2, "x": 1}], "x") == ([2], [1.0])


def test_figure_has_readable_axes(tmp_path):
    pytest.importorskip("matplotlib")
    runs = {"diffu-GRPO": rl_rows(0.02), "control": rl_rows(0.0)}
    fig = plot.make_figure(runs, ["reward", "val_accuracy"], {"val_accuracy": (0.4, "SFT model")}, title="demo")
    reward, val = fig.axes
    assert (reward.get_title(), reward.get_xlabel(), reward.get_ylabel()) == (
        "Rollout reward", "step", "mean reward per completion")
    assert val.get_title() == "Validation accuracy"
    assert [t.get_text() for t in val.get_legend().get_texts()] == ["diffu-GRPO", "control", "SFT model: 0.4"]
    assert all(float(t).is_integer() for t in reward.get_xticks())  # step ticks are whole steps
    assert list(val.lines[0].get_xdata()) == [5, 10, 15, 20]
    assert fig.get_suptitle() == "demo"


def test_cli_overlays_runs_into_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = write_run(tmp_path / "a" / "rl", rl_rows(0.02)), write_run(tmp_path / "b" / "rl", rl_rows(0.01))
    plot.main([str(a), str(b), "--keys", "reward,val_accuracy", "--out", str(tmp_path / "p.png"),
               "--baseline", "reward=0.5:SFT model"])
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    assert "wrote" in capsys.readouterr().out
    sft = write_run(tmp_path / "sft", sft_rows())
    plot.main([str(sft / "metrics.jsonl"), "--keys", "loss,val_loss", "--out", str(tmp_path / "sft.png")])
    assert (tmp_path / "sft.png").stat().st_size > 0
    with pytest.raises(SystemExit, match=r"no run logged 'reward'; the runs logged: epoch, grad_norm, loss"):
        plot.main([str(sft), "--keys", "reward", "--out", str(tmp_path / "x.png")])


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        plot.main([str(tmp_path), "--out", str(tmp_path / "x.png")])
    run = write_run(tmp_path / "run", rl_rows(0.01))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit, match=r"plot\.py: plotting needs matplotlib, an optional dependency: pip install"):
        plot.main([str(run), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit):  # argparse: exit status 2 with the rule
        plot.main([str(run), "--baseline", "reward"])
    assert plot.parse_baseline("val_accuracy=0.62:SFT model") == ("val_accuracy", 0.62, "SFT model")
