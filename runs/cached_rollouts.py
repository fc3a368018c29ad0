"""Cached rollouts inside RL, measured: the CPU demo's diffu-GRPO with rollouts in the sampler's fast modes.

d1's authors tried Fast-dLLM's cached decoding in online RL and found it unstable (overconfident logits, too many
tokens committed at once). This study answers it on the CPU demo (runs/sudoku_demo.py): the demo's RL, from the
demo's SFT checkpoints, with the demo's arguments (sudoku_demo.rl_args) and its held-out metric
(sudoku_demo.test_accuracy: 512 test puzzles, greedy, the EXACT sampler, one block of 24; the measuring
instrument never changes), once per rollout mode and seed. Only the rollout sampler changes between modes:
  exact               the exact sampler (the baseline)
  prefix              cache="prefix": keys/values of the prompt and finished blocks kept for the block
  dual                cache="dual": also the positions after the block (Fast-dLLM's dual cache)
  dual+threshold0.9   dual + parallel decoding at confidence 0.9 (Fast-dLLM's recipe; the sampler's threshold
                      rule, which never makes more model calls than the schedule)
  dual+refresh2       the middle ground: the dual cache refilled every 2 model calls of a block
The demo's RL decodes 24 tokens in ONE block of 24, where a cache covers only the prompt and prefix == dual. So
EVERY mode here, exact included, rolls out in blocks of 8 (3 blocks, 12 steps: 4 per block, 2 tokens per step);
the exact mode at block 8 is the baseline of the verdict. Everything else is the demo's: SFT checkpoint, seed,
data, RL hyperparameters (80 optimizer steps = 20 rounds of 16 prompts x 8 completions, mu = 4), evaluation.

Reported per mode and seed: the held-out solved-rate gain over the SFT model, the rollout-reward curve, seconds
per round (rollout wall and CPU time, whole round wall time) and the sampler's model calls and positions per
round (rows x sequence positions the calls ran: what a cache saves). Written to --out-dir: results.json,
cached_rollouts.md (the table and the verdict), cached_rollouts.png (rollout reward, validation accuracy and
rollout CPU seconds per round, means over the seeds; needs matplotlib, skipped with one line without it), one
diffu_grpo run folder per mode and seed.

The verdict rule, fixed before the runs (issue 16): the default for RL stays exact unless a cached mode keeps
the held-out gain within the seed noise of exact. Noise = the larger of the sample standard deviation of the
exact mode's per-seed gains and the binomial standard error of its held-out solved rate (100 sqrt(p(1-p)/n)
points, n test puzzles: the test set's own resolution); a mode keeps the gain when its mean gain is at least the
exact mode's mean gain minus 2 x noise.

    python runs/sudoku_demo.py --seeds 0,1,2 --out-dir out/demo      # the SFT checkpoints (once)
    OMP_NUM_THREADS=1 python runs/cached_rollouts.py --demo-dir out/demo --seeds 0,1,2 --out-dir out/cached
    python runs/cached_rollouts.py --quick --out-dir /tmp/cached      # seconds: an untrained model, no claims
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import data  # noqa: E402
import diffu_grpo  # noqa: E402
import plot  # noqa: E402
import sudoku_demo  # noqa: E402
from cli import ArgumentParser, check_out_dir, check_paths, run_cli, seed_list  # noqa: E402
from model import COMPACT_CHAT_TEMPLATE, LLaDA, make_char_tokenizer, preset_config  # noqa: E402
from train_utils import claim_out_dir  # noqa: E402

# Rollout mode -> diffu_grpo flags (appended last: argparse keeps the last value of a repeated flag).
BLOCK = ["--block-length", "8"]  # every mode, exact included: 3 blocks of 8 (rl_args' GEN sets one block of 24)
MODES = {
    "exact": [],
    "prefix": ["--cache", "prefix"],
    "dual": ["--cache", "dual"],
    "dual+threshold0.9": ["--cache", "dual", "--threshold", "0.9"],
    "dual+refresh2": ["--cache", "dual", "--cache-refresh", "2"],
}
# RL sizes: the demo's (80 optimizer steps, validation every 20); --quick: one round, tiny batches.
FULL = dict(rl_steps=sudoku_demo.FULL["rl_steps"], eval_every=sudoku_demo.FULL["eval_every"], rl_extra=[])
QUICK = dict(rl_steps=4, eval_every=4, rl_extra=[*sudoku_demo.QUICK["rl_extra"], "--val-size", "8"])


def quick_demo_dir(folder: Path, seeds: list[int]) -> Path:
    """--quick: a stand-in for the demo's folder (seedN/data, seedN/sft/step-000000) with the demo's quick data
    and an UNTRAINED model of the demo's size, so the study's code path runs in seconds (no claims)."""
    for seed in seeds:
        sudoku_demo.make_data(folder / f"seed{seed}" / "data", sudoku_demo.QUICK, error_rate=0.6)
        tokenizer = make_char_tokenizer(chat_template=COMPACT_CHAT_TEMPLATE)
        model = LLaDA(preset_config("demo", tokenizer)).init_weights(seed)
        ckpt = folder / f"seed{seed}" / "sft" / "step-000000"
        model.save_pretrained(ckpt, tokenizer=tokenizer)
    return folder


def sft_checkpoint(demo_dir: Path, seed: int) -> Path:
    found = sorted((demo_dir / f"seed{seed}" / "sft").glob("step-*"))
    if not found:
        raise FileNotFoundError(f"{demo_dir / f'seed{seed}' / 'sft'}: no SFT checkpoint (run runs/sudoku_demo.py "
                                f"--seeds {seed} --out-dir {demo_dir} first)")
    return found[-1]


def rl_run(mode: str, seed: int, sft_ckpt: Path, data_dir: Path, out: Path, sizes: dict, test: list[dict]) -> dict:
    """One diffu-GRPO run with `mode`'s rollouts; its held-out accuracy and per-round costs."""
    t0, c0, load0 = time.time(), time.process_time(), os.getloadavg()[0]
    diffu_grpo.main(sudoku_demo.rl_args(sft_ckpt, data_dir / "rl_train.csv", out, seed, sizes["rl_steps"],
                                        sizes["eval_every"], *sizes["rl_extra"], *BLOCK, *MODES[mode]))
    wall, cpu = time.time() - t0, time.process_time() - c0
    rows = sudoku_demo.metrics(out)
    rounds = [r for r in rows if "reward" in r]  # round statistics: on each round's first optimizer step
    t_train = [sum(r["t_step"] for r in rows if r["round"] == x["round"]) for x in rounds]
    mean = lambda key: statistics.fmean(r[key] for r in rounds)  # noqa: E731
    return {"mode": mode, "seed": seed, "test": sudoku_demo.test_accuracy(sorted(out.glob("step-*"))[-1], test),
            "rewards": sudoku_demo.round_rewards(rows), "rounds": len(rounds),
            "gen_calls": mean("gen_calls"), "gen_positions": mean("gen_positions"),
            "t_gen": mean("t_gen"), "t_gen_cpu": mean("t_gen_cpu"), "t_logp": mean("t_logp"),
            "t_round": statistics.fmean(r["t_gen"] + r["t_logp"] + t for r, t in zip(rounds, t_train)),
            "run_wall_s": wall, "run_cpu_s": cpu, "load_before": load0, "load_after": os.getloadavg()[0]}


def verdict(results: list[dict], sft: dict[int, float]) -> dict[str, dict]:
    """Per mode: per-seed gains (points), their mean, and whether the mean stays within 2 x noise of exact's
    (the rule in the module docstring)."""
    gains = {}
    for r in results:
        gains.setdefault(r["mode"], {})[r["seed"]] = 100 * (r["test"]["solved"] - sft[r["seed"]])
    exact = list(gains["exact"].values())
    p = statistics.fmean(r["test"]["solved"] for r in results if r["mode"] == "exact")
    n = next(r["test"]["items"] for r in results)
    noise = max(statistics.stdev(exact) if len(exact) > 1 else 0.0, 100 * math.sqrt(p * (1 - p) / n))
    floor = statistics.fmean(exact) - 2 * noise
    return {mode: {"gains": g, "mean": statistics.fmean(g.values()), "noise": noise, "floor": floor,
                   "keeps": statistics.fmean(g.values()) >= floor} for mode, g in gains.items()}


def table(results: list[dict], sft: dict[int, float], seeds: list[int]) -> str:
    v = verdict(results, sft)
    by = lambda mode, key: statistics.fmean(r[key] for r in results if r["mode"] == mode)  # noqa: E731
    lines = ["| rollouts (block 8) | RL solved, seeds " + "/".join(map(str, seeds)) + " | gain over SFT (mean, "
             "points) | minus exact's gain, per seed | rollout reward, first -> last quarter of the rounds | sampler "
             "calls / round | positions / round (vs exact) | rollout s / round: wall (CPU) | round s (wall) | keeps "
             "the gain? |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in [m for m in MODES if m in v]:
        runs = {r["seed"]: r for r in results if r["mode"] == mode}
        k = max(1, runs[seeds[0]]["rounds"] // 4)  # as the demo's table
        first = statistics.fmean(x for r in runs.values() for x in r["rewards"][:k])
        last = statistics.fmean(x for r in runs.values() for x in r["rewards"][-k:])
        solved = " / ".join(f"{100 * runs[s]['test']['solved']:.1f}" for s in seeds)
        paired = " / ".join(f"{v[mode]['gains'][s] - v['exact']['gains'][s]:+.1f}" for s in seeds)
        lines.append(
            f"| {mode} | {solved} | {v[mode]['mean']:+.1f} | {paired} | {first:.3f} -> {last:.3f} | "
            f"{by(mode, 'gen_calls'):.1f} | {by(mode, 'gen_positions'):,.0f} "
            f"({by(mode, 'gen_positions') / by('exact', 'gen_positions'):.2f}x) | {by(mode, 't_gen'):.2f} "
            f"({by(mode, 't_gen_cpu'):.2f}) | {by(mode, 't_round'):.2f} | {'yes' if v[mode]['keeps'] else 'NO'} |")
    e = v["exact"]
    lines.append(f"\nSFT held-out solved rate per seed: {', '.join(f'{100 * sft[s]:.1f}' for s in seeds)}. Noise: "
                 f"{e['noise']:.2f} points; a mode keeps the gain when its mean gain is >= {e['floor']:+.1f} "
                 f"(exact's {e['mean']:+.1f} - 2 x noise). Rollout reward: the first and last quarter of the "
                 f"{results[0]['rounds']} rounds; calls, positions (rows x sequence positions the sampler ran) and "
                 "seconds: per round; all means over the seeds. CPU: the process's CPU seconds in the rollout.")
    return "\n".join(lines)


def mean_rows(runs: list[list[dict]], keys: list[str]) -> list[dict]:
    """metrics rows of several seeds -> one row per step with each key's mean over the seeds that logged it."""
    steps = sorted({r["step"] for rows in runs for r in rows})
    out = []
    for s in steps:
        row = {"step": s}
        for key in keys:
            vals = [r[key] for rows in runs for r in rows if r["step"] == s and key in r]
            if vals:
                row[key] = statistics.fmean(vals)
        out.append(row)
    return out


def plot_study(path: Path, out: Path, modes: list[str], seeds: list[int]):
    keys = ["reward", "val_accuracy", "t_gen_cpu"]
    runs = {m: mean_rows([sudoku_demo.metrics(out / m / f"seed{s}") for s in seeds], keys) for m in modes}
    try:
        fig = plot.make_figure(runs, keys, title=f"Cached rollouts in the CPU demo's RL (mean of seeds "
                                                 f"{','.join(map(str, seeds))})")
    except ImportError as e:
        print(f"plot skipped: {e}")
        return
    fig.savefig(path, dpi=90)  # small enough to commit


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--demo-dir", default="out/demo",
                   help="a runs/sudoku_demo.py --out-dir: its seedN/sft checkpoints and seedN/data (default: "
                        "%(default)s; --quick makes a stand-in)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2",
                   help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated rollout modes, exact among them (default: all: {', '.join(MODES)})")
    p.add_argument("--out-dir", default="out/cached_rollouts",
                   help="the table, plot, results.json and one RL run folder per mode and seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier study in --out-dir")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests): untrained model, no claims")
    args = p.parse_args(argv)
    seeds = args.seeds
    modes = [m.strip() for m in args.modes.split(",")]
    if any(m not in MODES for m in modes) or "exact" not in modes or len(set(modes)) < len(modes):
        p.error(f"--modes {args.modes}: modes from {', '.join(MODES)}, each once, exact among them (the baseline)")
    check_out_dir(p, "--out-dir", args.out_dir)
    if not args.quick:
        check_paths(p, "--demo-dir", args.demo_dir)
    out = Path(args.out_dir)
    sizes = QUICK if args.quick else FULL
    run_files = (*MODES, "quick_demo", "results.json", "cached_rollouts.md", "cached_rollouts.png")
    with claim_out_dir(out, overwrite=args.overwrite, run_files=run_files, resumable=False):
        demo_dir = quick_demo_dir(out / "quick_demo", seeds) if args.quick else Path(args.demo_dir)
        machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
        sft, results = {}, []
        for seed in seeds:  # seed-major: a seed's modes run close in time (similar machine load)
            data_dir = demo_dir / f"seed{seed}" / "data"
            test = data.load_task("sudoku", "test", path=data_dir / "test.csv", style="compact")
            ckpt = sft_checkpoint(demo_dir, seed)
            sft[seed] = sudoku_demo.test_accuracy(ckpt, test)["solved"]
            for mode in modes:
                results.append(rl_run(mode, seed, ckpt, data_dir, out / mode / f"seed{seed}", sizes, test))
                r = results[-1]
                print(f"[{mode} seed {seed}] solved {100 * sft[seed]:.1f} -> {100 * r['test']['solved']:.1f} | "
                      f"rollout {r['t_gen']:.2f}s/round, {r['gen_positions']:,.0f} positions", flush=True)
        md = table(results, sft, seeds)
        (out / "results.json").write_text(json.dumps({"machine": machine, "sft_solved": sft, "runs": results,
                                                      "verdict": verdict(results, sft)}, indent=2))
        (out / "cached_rollouts.md").write_text(md + "\n")
        plot_study(out / "cached_rollouts.png", out, modes, seeds)
    print("\n" + md)
    return results


if __name__ == "__main__":
    run_cli(main)
