"""The whole d1 recipe on a CPU (a seed: ~6 min on 2 lightly loaded cores): masked SFT, then diffu-GRPO, 4x4 Sudoku.

A 0.9M-parameter LLaDA-architecture model with a character vocabulary is trained from scratch with sft.py on
generated puzzles, then diffu_grpo.py improves it with the d1 estimator and the Sudoku reward, and eval.py's
functions score both on held-out puzzles. The same code paths as the 8B run: this script only writes data
files and calls `sft.main`, `diffu_grpo.main` and `eval.evaluate` with small sizes and hyperparameters.

The setting, and why (see README, "The CPU demo"):
- Held-out test puzzles have solution grids never seen in training (the 288 valid grids are split
  192 train / 48 val / 48 test), 6-10 blanks each, unique solutions.
- The SFT demonstrations carry a SYSTEMATIC error: when the last cell (cell 15) is blank, 60% of the
  demonstrations write (v mod 4) + 1 instead of its value v. SFT learns the error; the reward (fraction of
  blank cells correct, d1's Sudoku reward) penalises it. d1's estimator scores each answer token with the whole
  answer masked, so a per-position bias like this is exactly what it can see and fix. It cannot, at this size,
  teach the multi-step skill the iterative sampler uses (throwaway prototypes found clean, under-trained SFT
  models do not improve): the demo shows the mechanics working, not that RL adds reasoning.
- A control run is identical except that the reward is replaced by U(0, 1) noise: its held-out accuracy must
  not improve, which shows the gain comes from the reward.
The headline metric is the held-out SOLVED rate (every blank correct), greedy decoding like the paper; d1's
cell-level Sudoku accuracy and the cell-15 error rate are reported next to it.

    python runs/sudoku_demo.py                      # one seed, writes out/demo/seed0/...
    python runs/sudoku_demo.py --seeds 0,1,2        # the README table
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import data  # noqa: E402
import diffu_grpo  # noqa: E402
import eval as evaluation  # noqa: E402
import plot  # noqa: E402
import sft  # noqa: E402
from cli import ArgumentParser, check_out_dir, probability, run_cli, seed_list
from model import COMPACT_CHAT_TEMPLATE, LLaDA, load_tokenizer, make_char_tokenizer, save_tokenizer
from train_utils import claim_out_dir

# RL sizes in OPTIMIZER steps (diffu_grpo's unit): mu = 4 steps per rollout round, so 80 steps = 20 rounds.
FULL = dict(sft_examples=48000, sft_epochs=2, rl_prompts=4000, test_items=512, rl_steps=80, eval_every=20, rl_extra=[])
QUICK = dict(sft_examples=640, sft_epochs=1, rl_prompts=64, test_items=16, rl_steps=8, eval_every=4,
             rl_extra=["--prompts-per-step", "4", "--num-generations", "4", "--micro-batch-size", "16"])
GEN = ["--gen-length", "24", "--block-length", "24"]  # "<answer>" + 16 digits + "</answer>" + <|eot_id|> + EOS
VAL_SIZE = 128  # diffu_grpo.py's --val-size: its validation puzzles (training grids), also scored for the SFT model


def taught_error(puzzle: str, solution: str, rng: random.Random, rate: float) -> str:
    """The demonstration: the solution, except that a blank cell 15 is written (v mod 4) + 1 with prob. rate."""
    cells = list(solution)
    if puzzle[15] == "0" and rng.random() < rate:
        cells[15] = str(int(cells[15]) % 4 + 1)
    return "".join(cells)


def make_data(folder: Path, sizes: dict, error_rate: float):
    """sft.jsonl (demonstrations with the taught error), rl_train.csv, test.csv and a tokenizer folder.
    The data is the same for every seed (data seed 0): seeds vary the training, not the test set."""
    folder.mkdir(parents=True, exist_ok=True)
    train = data.synthetic_task("sudoku", "train", sizes["sft_examples"] + sizes["rl_prompts"], seed=0,
                                blanks=(6, 10))
    rng = random.Random(0)
    with open(folder / "sft.jsonl", "w") as f:
        for ex in train[:sizes["sft_examples"]]:
            puzzle, solution = ex["target"]
            answer = "<answer>" + taught_error(puzzle, solution, rng, error_rate) + "</answer>"
            f.write(json.dumps({"prompt": ex["prompt"], "answer": answer}) + "\n")
    data.write_sudoku_csv(folder / "rl_train.csv", train[sizes["sft_examples"]:])
    test = data.synthetic_task("sudoku", "test", sizes["test_items"], seed=0, blanks=(6, 10))
    data.write_sudoku_csv(folder / "test.csv", test)
    save_tokenizer(make_char_tokenizer(chat_template=COMPACT_CHAT_TEMPLATE), folder / "tokenizer")  # transformers 4, 5


def test_accuracy(ckpt: Path, test: list[dict]) -> dict:
    """Greedy held-out accuracy with eval.py's evaluation function: solved rate, d1 cell accuracy, cell-15 error."""
    model, tokenizer = LLaDA.from_pretrained(ckpt).eval(), load_tokenizer(ckpt)
    records = evaluation.evaluate(model, tokenizer, test, gen_length=24, block_length=24, steps=12,
                                  temperature=0.0, batch_size=128, prefill="", seed=0, progress=False)
    c15 = [r for r in records if r["target"][0][15] == "0"]
    err15 = sum(r["parsed"][15] != r["target"][1][15] for r in c15) / max(1, len(c15))
    return {"solved": sum(r["score"] == 1.0 for r in records) / len(records),
            "cell_accuracy": evaluation.summarize(records)["sudoku"][24]["accuracy"],  # d1's metric
            "cell15_error": err15, "items": len(records)}


def sft_args(data_dir: Path, out: Path, seed: int, epochs: int, warmup: int = 100) -> list[str]:
    """sft.py's flags of the demo: a LLaDA-architecture model trained from scratch on data_dir/sft.jsonl."""
    return ["--init-from-scratch", "demo", "--tokenizer", str(data_dir / "tokenizer"),
            "--data", str(data_dir / "sft.jsonl"), "--lora-r", "0", "--lr", "1e-3", "--lr-schedule", "cosine",
            "--warmup-steps", str(warmup),  # without it some seeds sat on a plateau for hundreds of steps (val loss)
            "--batch-size", "64", "--grad-accum", "1", "--epochs", str(epochs), "--weight-decay", "0",
            "--grad-clip", "1.0", "--pad-answers-to", "24", "--max-length", "128", "--eval-every", "250",
            "--save-every", "100000", "--keep-last", "1", "--out-dir", str(out), "--seed", str(seed)]


def rl_args(init: Path, train_csv: Path, out: Path, seed: int, steps: int, eval_every: int, *extra) -> list[str]:
    # The prototype settings of the issue: faithful d1 estimator (p_mask_prompt 0.15, fresh mask per inner
    # step), clip 0.2, beta 0, G = 8, 16 prompts per step, mu = 4, AdamW lr 3e-5 betas (0.9, 0.99), wd 0,
    # grad-norm clip 0.2, rollout temperature 1.0, constant lr without warmup; full fine-tuning (LoRA is
    # pointless at 0.9M parameters).
    return ["--init", str(init), "--task", "sudoku", "--train-path", str(train_csv), "--style", "compact",
            "--lora-r", "0", "--beta", "0", "--eps", "0.2", "--mu", "4", "--lr", "3e-5", "--warmup-steps", "0",
            "--weight-decay", "0",
            "--max-grad-norm", "0.2", "--temperature", "1.0", "--num-generations", "8", "--prompts-per-step", "16",
            "--micro-batch-size", "64", "--gen-batch-size", "128", *GEN, "--diffusion-steps", "12",
            "--max-steps", str(steps), "--eval-every", str(eval_every), "--val-size", str(VAL_SIZE),
            "--save-every", str(steps), "--out-dir", str(out), "--seed", str(seed), *extra]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in open(folder / "metrics.jsonl")]


def round_rewards(rows: list[dict]) -> list[float]:
    """The mean rollout reward of each round, from a run's metrics rows (logged on each round's first step)."""
    return [m["reward"] for m in rows if "reward" in m]


def reward_quarters(rewards: list[float]) -> dict[str, float]:
    """The mean rollout reward of the first and of the last quarter of the rounds (one round at least)."""
    k = max(1, len(rewards) // 4)
    return {"first": sum(rewards[:k]) / k, "last": sum(rewards[-k:]) / k}


def plot_curves(path: Path, runs: dict[str, list[dict]], sft_val_accuracy: float, seed: int):
    """Rollout reward and validation accuracy per RL step (plot.py), the SFT model marked in both panels: its
    rollouts are step 1's (generated before the first update), its validation accuracy was scored on the same
    puzzles. matplotlib is optional: without it the plot is skipped with one line."""
    first = runs["diffu-GRPO"][0]["reward"]
    try:
        plot.plot_runs(runs, ["reward", "val_accuracy"], path,
                       baselines={"reward": (first, "SFT model (step-1 rollouts)"),
                                  "val_accuracy": (sft_val_accuracy, "SFT model")},
                       title=f"Sudoku demo, seed {seed}")
    except ImportError as e:
        print(f"plot skipped: {e}")


def run_seed(seed: int, out: Path, sizes: dict, error_rate: float, control: bool) -> dict:
    t0 = time.time()
    make_data(out / "data", sizes, error_rate)
    sft.main(sft_args(out / "data", out / "sft", seed, sizes["sft_epochs"]))
    sft_ckpt = sorted((out / "sft").glob("step-*"))[-1]
    t_sft = time.time() - t0
    test = data.load_task("sudoku", "test", path=out / "data" / "test.csv", style="compact")
    result = {"seed": seed, "sft": test_accuracy(sft_ckpt, test), "sft_minutes": t_sft / 60}
    val = data.load_task("sudoku", "val", path=out / "data" / "rl_train.csv", style="compact", limit=VAL_SIZE)
    result["sft_val_accuracy"] = test_accuracy(sft_ckpt, val)["cell_accuracy"]  # the RL runs' validation metric
    runs = {}
    for name, extra in [("diffu-GRPO", []), ("random-reward control", ["--random-reward"])][:2 if control else 1]:
        t1 = time.time()
        folder = out / ("rl" if not extra else "control")
        diffu_grpo.main(rl_args(sft_ckpt, out / "data" / "rl_train.csv", folder, seed, sizes["rl_steps"],
                                sizes["eval_every"], *sizes["rl_extra"], *extra))
        runs[name] = metrics(folder)
        key = "rl" if not extra else "control"
        result[key] = test_accuracy(sorted(folder.glob("step-*"))[-1], test)
        result[key + "_minutes"] = (time.time() - t1) / 60
        result[key + "_rollout_reward"] = reward_quarters(round_rewards(runs[name]))
    result["minutes"] = (time.time() - t0) / 60
    plot_curves(out / "rl_curves.png", runs, result["sft_val_accuracy"], seed)
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict]) -> str:
    pct = lambda d, k: f"{100 * d[k]:.1f}" if d else "-"
    lines = ["| seed | SFT solved | RL solved | control solved | SFT -> RL cell acc (d1) | cell-15 error SFT -> RL "
             "| rollout reward (T=1) first -> last | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rl, ctl = r.get("rl"), r.get("control")
        rw = r.get("rl_rollout_reward")
        lines.append(f"| {r['seed']} | {pct(r['sft'], 'solved')} | {pct(rl, 'solved')} | {pct(ctl, 'solved')} | "
                     f"{pct(r['sft'], 'cell_accuracy')} -> {pct(rl, 'cell_accuracy')} | "
                     f"{pct(r['sft'], 'cell15_error')} -> {pct(rl, 'cell15_error')} | "
                     f"{rw['first']:.3f} -> {rw['last']:.3f} | {r['minutes']:.1f} |" if rw else "")
    if len(results) > 1 and all("rl" in r for r in results):
        gain = sum(r["rl"]["solved"] - r["sft"]["solved"] for r in results) / len(results)
        lines.append(f"\nmean gain in held-out solved rate: {100 * gain:+.1f} points over {len(results)} seeds")
    return "\n".join(lines)


# What a seed's folder holds: what --overwrite deletes.
SEED_FILES = ("data", "sft", "rl", "control", "rl_curves.png", "summary.json")


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--seeds", type=seed_list, default="0",
                   help="comma-separated training seeds (the data is the same for all; default: %(default)s)")
    p.add_argument("--out-dir", default="out/demo",
                   help="one folder per seed, plus summary.json / summary.md (default: %(default)s)")
    p.add_argument("--error-rate", type=probability, default=0.6,
                   help="share of cell-15 demonstrations with the taught error (default: %(default)s)")
    p.add_argument("--no-control", action="store_true", help="skip the random-reward control run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the seeds' folders of an earlier demo run (without it they are refused)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests): tiny sizes, no claims")
    args = p.parse_args(argv)
    seeds = args.seeds
    check_out_dir(p, "--out-dir", args.out_dir)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sizes = QUICK if args.quick else FULL
    out = Path(args.out_dir)
    results = []
    for seed in seeds:  # each seed's folder is claimed like a training run's --out-dir
        with claim_out_dir(out / f"seed{seed}", overwrite=args.overwrite, run_files=SEED_FILES, resumable=False):
            results.append(run_seed(seed, out / f"seed{seed}", sizes, args.error_rate, not args.no_control))
    md = table(results)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(md + "\n")
    print("\n" + md)
    return results


if __name__ == "__main__":
    run_cli(main)
