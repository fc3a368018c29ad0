"""Training curves as a PNG from the metrics.jsonl of any sft.py or diffu_grpo.py run, several runs overlaid.

One panel per metric (x: the optimizer step, y: the metric, titled in words), one line per run, named in the
legend by its folder; `--baseline` draws a dashed reference line (e.g. the SFT model's accuracy) in a panel.

    python plot.py out/grpo --keys reward,val_accuracy --out plot.png
    python plot.py out/demo/seed0/rl out/demo/seed0/control --keys reward,val_accuracy --out rl.png
    python plot.py out/sft --keys loss,val_loss --out sft.png
    python plot.py out/grpo --keys val_accuracy --baseline "val_accuracy=0.62:SFT model" --out val.png

matplotlib is optional (not in requirements.txt: `pip install matplotlib`); without it this script says so and
exits, and nothing else in the project imports it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

# key -> (panel title, y-axis label). Keys of sft.py (loss, val_loss, lr, ...) and diffu_grpo.py (reward, kl, ...).
TITLES = {
    "loss": ("Training loss", "loss"),
    "val_loss": ("Validation loss", "loss"),
    "reward": ("Rollout reward", "mean reward per completion"),
    "reward_std": ("Spread of rollout rewards", "standard deviation"),
    "zero_std_groups": ("Groups whose completions all scored the same", "fraction of groups"),
    "val_accuracy": ("Validation accuracy", "accuracy (mean over tasks)"),
    "kl": ("KL divergence to the reference policy", "per completion token"),
    "clip_frac": ("Clipped policy ratios", "fraction of tokens"),
    "ratio": ("Policy ratio (new / old)", "mean per token"),
    "completion_len": ("Completion length", "tokens"),
    "grad_norm": ("Gradient norm (before clipping)", "L2 norm"),
    "lr": ("Learning rate", "learning rate"),
    "epoch": ("Epoch", "epoch"),
    "seq_len": ("Padded sequence length", "tokens"),
    "tok_per_s": ("Training throughput", "tokens per second"),
    "gen_tok_s": ("Rollout generation throughput", "tokens per second"),
    "gen_calls": ("Rollout sampler model calls", "calls per round"),
    "gen_positions": ("Rollout sampler work", "rows x positions run per round"),
    "t_gen": ("Rollout generation time", "seconds per step"),
    "t_gen_cpu": ("Rollout generation CPU time", "CPU seconds per round"),
    "t_logp": ("Old/reference log-prob time", "seconds per step"),
    "t_train": ("Policy update time", "seconds per step"),
}


def describe(key: str) -> tuple[str, str]:
    """(title, y label) of a metric key; per-task keys ("val/gsm8k", "reward/sudoku/total") in words too."""
    if key in TITLES:
        return TITLES[key]
    parts = key.split("/")
    if parts[0] == "val" and len(parts) == 2:
        return f"Validation accuracy: {parts[1]}", "accuracy"
    if parts[0] == "reward" and len(parts) == 3:
        return f"Rollout reward: {parts[1]}, {parts[2].replace('_', ' ')}", "mean per completion"
    return key.replace("_", " ").replace("/", ": ").capitalize(), key


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The rows of a run folder's metrics.jsonl (or of a .jsonl file given directly)."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no metrics.jsonl (pass a run's --out-dir or a metrics .jsonl file)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n}: invalid JSON ({e})") from None
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged `key` as a finite number, in step order."""
    points = {int(r["step"]): float(r[key]) for r in rows
              if "step" in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_runs(runs: dict[str, list[dict]], keys: list[str], out: str | os.PathLike,
              baselines: dict[str, tuple[float, str]] | None = None, title: str | None = None) -> Path:
    """Write a PNG with one panel per key and one line per run (see make_figure)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_figure(runs, keys, baselines, title).savefig(out, dpi=150)
    return out


def make_figure(runs: dict[str, list[dict]], keys: list[str], baselines: dict[str, tuple[float, str]] | None = None,
                title: str | None = None):
    """A matplotlib Figure with one panel per key and one line per run. runs: {legend name: metrics rows};
    baselines: {key: (value, label)}, a dashed horizontal line in that key's panel. Raises ImportError (with the
    install command) when matplotlib is missing, ValueError when no run logged a key."""
    try:  # the object-oriented API: no pyplot, no global backend or state
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError("plotting needs matplotlib, an optional dependency: pip install matplotlib") from None
    baselines = baselines or {}
    for key in keys:
        if not any(series(rows, key)[0] for rows in runs.values()):
            logged = sorted({k for rows in runs.values() for r in rows for k in r if k != "step"})
            raise ValueError(f"no run logged {key!r}; the runs logged: {', '.join(logged) or 'nothing'}")
    fig = Figure(figsize=(5.2 * len(keys), 3.8), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        head, ylabel = describe(key)
        for name, rows in runs.items():
            steps, values = series(rows, key)
            if steps:  # markers where points are sparse (validation every N steps), a plain line otherwise
                ax.plot(steps, values, marker="o" if len(steps) <= 40 else None, markersize=4, linewidth=1.6,
                        label=name)
        if key in baselines:
            value, label = baselines[key]
            ax.axhline(value, color="0.35", linestyle="--", linewidth=1.2, label=f"{label}: {value:.3g}")
        ax.set_title(head)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def parse_baseline(text: str) -> tuple[str, float, str]:
    """"KEY=VALUE[:LABEL]" -> (key, value, label)."""
    key, sep, rest = text.partition("=")
    value, _, label = rest.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or not key.strip() or number is None:
        raise argparse.ArgumentTypeError(f"--baseline {text!r}: expected KEY=VALUE or KEY=VALUE:LABEL, "
                                         "e.g. val_accuracy=0.62:SFT model")
    return key.strip(), number, label.strip() or "baseline"


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders (each with a metrics.jsonl) or metrics .jsonl files; each is one line per panel")
    p.add_argument("--keys", default="reward,val_accuracy",
                   help="comma-separated metrics, one panel each (sft.py: loss, val_loss, lr, grad_norm; "
                        "diffu_grpo.py: reward, val_accuracy, kl, clip_frac, completion_len, val/TASK, ...); "
                        "default: %(default)s")
    p.add_argument("--out", default="plot.png", help="the PNG to write (default: %(default)s)")
    p.add_argument("--labels", default=None,
                   help="comma-separated legend names, one per RUN_DIR (default: the folder names)")
    p.add_argument("--baseline", action="append", default=[], type=parse_baseline, metavar="KEY=VALUE[:LABEL]",
                   help="a dashed reference line in KEY's panel (repeatable), e.g. 'val_accuracy=0.62:SFT model'")
    p.add_argument("--title", default=None, help="a title above all panels")
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    if not keys:
        p.error("--keys is empty: name at least one metric")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [Path(r).name or str(r) for r in args.runs]
    if len(labels) != len(args.runs):
        p.error(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    if len(set(labels)) != len(labels):  # two runs named alike (…/seed0/rl, …/seed1/rl): use the given paths
        labels = [str(r) for r in args.runs]
    baselines = {key: (value, label) for key, value, label in args.baseline}
    try:
        runs = {label: read_metrics(run) for label, run in zip(labels, args.runs)}
        out = plot_runs(runs, keys, args.out, baselines, args.title)
    except (ImportError, FileNotFoundError, ValueError) as e:  # known failures: one line, no traceback
        sys.exit(f"plot.py: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
