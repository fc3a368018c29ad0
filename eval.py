"""Evaluate LLaDA checkpoints on GSM8K, MATH-500, Countdown and 4x4 Sudoku with d1's protocol, and on the coding
sets HumanEval and MBPP (sanitized, test split).

d1 protocol (the defaults): the "eval" prompts (d1's evaluation system texts, which differ from its training
prompts), chat template + the prefill `<reasoning>`, greedy decoding (temperature 0) with low-confidence
remasking, block length 32, steps = gen_length / 2, gen lengths 128, 256 and 512, batches of 8, on d1's sets
(Countdown: its 256-item test file; Sudoku: its 256 of 500 puzzles drawn with seed 42; data.py). Every item is
scored under BOTH protocols of rewards.eval_score, reported side by side: "d1" replicates d1's public scorer item
for item (quote it next to the paper's tables), "fixed" (the default, and what RL validation uses) corrects its
quirks in both directions (rewards.py lists every rule). d1's scorer reads the completion decoded WITH special
tokens (<|eot_id|>, <|endoftext|>; its Sudoku rules depend on them), so both decodings are stored. Accuracy is
the mean verdict, except Sudoku: correct blank cells over ALL blank cells of the set (d1's micro-average, not the
mean of per-puzzle fractions), under both protocols.
Coding (--task humaneval,mbpp; "code" = KodCode, for --split val): pass@1 of the greedy completion, i.e. the
mean 0/1 verdict of sandbox.pass_at_1 (the extracted program passes all of the problem's tests in one sandboxed
process); the sandboxes of a batch run in parallel (rewards.CODE_WORKERS). Our prompt (data.CODE_SYSTEM; d1
published none) asks for the solution as one fenced Python block inside <answer>. The sandbox (bubblewrap
namespaces, or an rlimit fallback) and what it does not stop: sandbox.py and README's threat table.

Deliberate deviations from d1:
- Padding is masked: prompts of a batch are left-padded and the attention mask hides the padding. d1 passed
  no mask (its padding EOS tokens were attended to), so its numbers depend slightly on how prompts were batched.
- No best-on-test selection: d1 reported the best of many checkpoints on the test set. Here a run is reported
  at its LAST checkpoint and, when a validation metrics file exists, at the checkpoint that is best ON
  VALIDATION; selecting a checkpoint by its test accuracy is not offered.
- fp32 on CPU / bf16 on GPU (d1: fp16 autocast); several seeds at temperature > 0 give mean +- std.
Sampling noise comes from one generator per item keyed on (seed, item index), never on the rank or the
batch, so sharding over N processes gives the same samples as one process.

Outputs in --out-dir: generations.jsonl (one record per item: id, task, checkpoint, gen_length, seed, prompt,
completion (special tokens skipped), raw_completion (special tokens kept), target, and per protocol what the
scorer read and its verdict: parsed/score (fixed), parsed_d1/score_d1 (d1; None for coding tasks, which d1 never
scored)), results.json and results.md (accuracy under both protocols per checkpoint, task and length, with the
number of items and the wall time). `--rescore` re-scores a generations file with the current parsers without
loading any model (records written before raw_completion existed get no d1 verdict).

CPU (tiny smoke test):  python eval.py --model CKPT --task sudoku --style compact --data-path s.csv --gen-length 16 --block-length 8 --limit 8
Coding (tiny, offline): python eval.py --model CKPT --task humaneval,mbpp --data-path h.jsonl,m.jsonl --gen-length 16 --block-length 8 --limit 2
Coding (1 GPU):         python eval.py --model GSAI-ML/LLaDA-8B-Instruct --adapter out/grpo/step-005000 --task humaneval,mbpp --gen-length 512
1 GPU:                  python eval.py --model GSAI-ML/LLaDA-8B-Instruct --adapter out/grpo/step-007700 --task gsm8k
8 GPUs:                 torchrun --standalone --nproc_per_node=8 eval.py --checkpoints runs/gsm8k --task gsm8k,math,countdown,sudoku
Select on validation:   torchrun ... eval.py --checkpoints runs/gsm8k --task gsm8k --split val --out-dir out/val
                        torchrun ... eval.py --checkpoints runs/gsm8k --task gsm8k --val-file out/val/results.json --only-selected
Re-score:               python eval.py --rescore out/eval/generations.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from data import EVAL_PREFILL, STYLES, TASKS, format_prompt, load_tasks
from cli import (ArgumentParser, check_model_arg, check_out_dir, check_paths, nonneg_float, positive_float,
                 positive_int, probability, resolve_device, run_cli)
from model import LLaDA, adapter_base, example_generator, load_adapter, load_tokenizer
from rewards import D1_TASKS, eval_score, eval_scores, parsed_answer
from sample import generate, left_pad
from train_utils import close_distributed, init_distributed

DEFAULT_MODEL = "GSAI-ML/LLaDA-8B-Instruct"
DEFAULT_OUT = "out/eval"
PROTOCOLS = {"accuracy": "fixed: rewards.eval_score(protocol='fixed'), d1's scorer with its quirks corrected",
             "accuracy_d1": "d1: rewards.eval_score(protocol='d1'), d1's public scorer replicated item for item"}

# -----------------------------------------------------------------------------
# Scoring (no model needed)


def score_records(records: list[dict]) -> list[dict]:
    """(Re)compute each record's verdicts from its completion and target, in place: "parsed"/"score" under the
    fixed protocol and "parsed_d1"/"score_d1" under d1's (None where d1 has no scorer, or when the record lacks
    raw_completion: d1's rules need the special tokens). The fixed protocol reads raw_completion too when it is
    there (it stops at the end of the turn, so both decodings agree). Records are scored task by task: coding
    verdicts run their sandboxes in parallel."""
    by_task = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    for task, rs in by_task.items():
        # JSON turns tuples into lists (Countdown, Sudoku); coding targets are dicts and come back unchanged
        targets = [tuple(r["target"]) if isinstance(r["target"], list) else r["target"] for r in rs]
        texts = [r.get("raw_completion", r["completion"]) for r in rs]
        for r, text, verdict in zip(rs, texts, eval_scores(task, texts, targets)):
            r["parsed"], r["score"] = parsed_answer(task, text), verdict
        for r, target in zip(rs, targets):
            raw = r.get("raw_completion") if task in D1_TASKS else None
            r["parsed_d1"] = None if raw is None else parsed_answer(task, raw, "d1")
            r["score_d1"] = None if raw is None else eval_score(task, raw, target, "d1")
    return records


def sudoku_cells(record: dict, key: str = "score") -> tuple[int, int]:
    """(correct blank cells, blank cells) of a scored Sudoku record; record[key] is correct / blanks."""
    blanks = str(record["target"][0])[:16].count("0")
    return round(record[key] * blanks), blanks


def accuracy(records: list[dict], key: str = "score") -> float | None:
    """Mean of record[key] ("score": fixed protocol, "score_d1": d1's); Sudoku: d1's micro-average, correct blank
    cells over all blank cells of the set. None when a record has no verdict under that protocol."""
    if not records:
        return float("nan")
    if any(r.get(key) is None for r in records):
        return None
    if records[0]["task"] == "sudoku":
        correct, blanks = map(sum, zip(*(sudoku_cells(r, key) for r in records)))
        return correct / blanks if blanks else 0.0
    return sum(r[key] for r in records) / len(records)


def _over_seeds(by_seed: dict[int, list[dict]], key: str) -> tuple:
    """(mean, sample std (0 for one seed), {seed: accuracy}) of accuracy(records, key) over seeds; all None when a
    seed has no verdict under that protocol."""
    per_seed = {str(seed): accuracy(rs, key) for seed, rs in by_seed.items()}
    accs = list(per_seed.values())
    if None in accs:
        return None, None, None
    return sum(accs) / len(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0, per_seed


def summarize(records: list[dict]) -> dict:
    """{task: {gen_length: {accuracy, std, n, seeds, per_seed, wall_s, accuracy_d1, std_d1, per_seed_d1}}}:
    accuracy (fixed protocol) in [0, 1], the mean over seeds; std the sample standard deviation over seeds (0 for
    one seed); wall_s summed over seeds; the *_d1 entries are the same under d1's protocol (None without one)."""
    groups = defaultdict(lambda: defaultdict(list))  # (task, gen_length) -> seed -> records
    for r in records:
        groups[(r["task"], r["gen_length"])][r["seed"]].append(r)
    out = {}
    for (task, length), by_seed in groups.items():
        acc, std, per_seed = _over_seeds(by_seed, "score")
        acc_d1, std_d1, per_seed_d1 = _over_seeds(by_seed, "score_d1")
        out.setdefault(task, {})[length] = {
            "accuracy": acc, "std": std,
            "n": max(len(rs) for rs in by_seed.values()),
            "seeds": list(by_seed),
            "per_seed": per_seed,
            "wall_s": sum(rs[0].get("wall_s") or 0.0 for rs in by_seed.values()),
            "accuracy_d1": acc_d1, "std_d1": std_d1, "per_seed_d1": per_seed_d1,
        }
    return out


def _percent(accuracy: float | None, std: float | None, seeds: int) -> str:
    if accuracy is None:
        return "-"
    return f"{100 * accuracy:.2f}" + (f" ± {100 * std:.2f}" if seeds > 1 else "")


def format_table(results: dict[str, dict], marks: dict[str, str] | None = None) -> str:
    """Markdown table, one row per (checkpoint, task, gen_length), the fixed and d1 protocols side by side (mean ±
    std over seeds when there are several; "-" where d1 has no verdict). results: {checkpoint: summarize(...)}."""
    lines = ["| checkpoint | task | gen length | fixed (%) | d1 (%) | items | seeds | wall (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for ckpt, summary in results.items():
        name = ckpt + (f" ({marks[ckpt]})" if marks and marks.get(ckpt) else "")
        for task, by_len in summary.items():
            for length, row in by_len.items():
                seeds = len(row["seeds"])
                lines.append(f"| {name} | {task} | {length} | {_percent(row['accuracy'], row['std'], seeds)} "
                             f"| {_percent(row.get('accuracy_d1'), row.get('std_d1'), seeds)} | {row['n']} | {seeds} "
                             f"| {row['wall_s']:.1f} |")
    return "\n".join(lines)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_results(out_dir: Path, results: dict, marks: dict, extra: dict) -> str:
    """results.json + results.md in out_dir; returns the table."""
    table = format_table(results, marks)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.json", "w") as f:
        json.dump({**extra, "protocols": PROTOCOLS, "marks": marks, "results": results}, f, indent=2)
    with open(out_dir / "results.md", "w") as f:
        f.write(table + "\n")
    return table


def group_by_checkpoint(records: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in records:
        out[r.get("checkpoint", "model")].append(r)
    return dict(out)


# -----------------------------------------------------------------------------
# Generation, sharded over ranks


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Items of this rank: i % world == rank. The shards of ranks 0..world-1 are disjoint and cover range(n)."""
    return list(range(rank, n, world))


@torch.no_grad()
def evaluate(model, tokenizer, examples: list[dict], gen_length: int, block_length: int = 32,
             steps: int | None = None, temperature: float = 0.0, batch_size: int = 8, prefill: str = EVAL_PREFILL,
             seed: int = 0, rank: int = 0, world: int = 1, progress: bool = True,
             threshold: float | None = None) -> list[dict]:
    """Generate and score a completion for every example; returns one scored record per example, in order.
    With world > 1 (torch.distributed initialised) each rank generates its shard and every rank returns ALL
    records (all_gather_object). steps defaults to gen_length // 2 (d1)."""
    steps = steps or gen_length // 2
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    mine = shard_indices(len(examples), rank, world)
    prompts = {i: format_prompt(tokenizer, examples[i]["prompt"], prefill) for i in mine}
    ids = {i: tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in mine}  # template has the BOS
    order = sorted(mine, key=lambda i: (-len(ids[i]), i))  # similar lengths share a batch: little padding
    was_training = model.training
    model.eval()
    records = []
    bar = tqdm(total=len(order), unit="item", disable=not progress, desc=f"eval L={gen_length} seed={seed}")
    for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size]
        x, mask = left_pad([ids[i] for i in batch], pad_id, device)
        P = x.shape[1]
        out = generate(model, x, mask, steps=steps, gen_length=gen_length,
                       block_length=block_length, temperature=temperature, threshold=threshold,
                       generator=[example_generator(seed, i) for i in batch])  # keyed on the item; (B, P + gen_length)
        completion_ids = out[:, P:].cpu()  # (B, gen_length)
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        raws = tokenizer.batch_decode(completion_ids, skip_special_tokens=False)  # as d1 decoded: its scorer needs them
        for i, text, raw in zip(batch, texts, raws):
            ex = examples[i]
            records.append({"index": i, "id": ex["id"], "task": ex["task"], "gen_length": gen_length, "seed": seed,
                            "prompt": prompts[i], "completion": text, "raw_completion": raw, "target": ex["target"]})
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    score_records(records)  # parsing is cheap, but each rank scores its own shard anyway
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    records.sort(key=lambda r: r["index"])
    assert [r["index"] for r in records] == list(range(len(examples))), "sharding lost or duplicated items"
    return records


# -----------------------------------------------------------------------------
# Checkpoints of a run


def is_checkpoint(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()


def list_checkpoints(spec: str) -> list[Path]:
    """Comma-separated checkpoint folders (adapters or full models), or one run folder whose step-<N>
    subfolders (sft.py / diffu_grpo.py checkpoints) are taken in step order."""
    paths = [Path(p.strip()) for p in spec.split(",") if p.strip()]
    if len(paths) == 1 and paths[0].is_dir() and not is_checkpoint(paths[0]):
        steps = {step_of(d): d for d in paths[0].iterdir() if d.is_dir() and step_of(d) is not None}
        if not steps:
            raise FileNotFoundError(f"{paths[0]} is neither a checkpoint nor a run folder with step-<N> subfolders")
        return [steps[s] for s in sorted(steps)]
    for p in paths:
        if not is_checkpoint(p):
            raise FileNotFoundError(f"{p} is not a checkpoint (no adapter_config.json or config.json)")
    return paths


def step_of(ckpt: Path) -> int | None:
    m = re.fullmatch(r"step-(\d+)", ckpt.name)
    return int(m.group(1)) if m else None


def select_by_validation(ckpts: list[Path], val_file: Path, metric: str = "val_accuracy") -> Path | None:
    """The checkpoint best on validation (the earliest on ties), None when no checkpoint has a value. val_file:
    a JSONL log whose lines carry "step" and `metric` (e.g. the training run's metrics.jsonl), or the
    results.json of an `eval.py --split val` run (score = mean accuracy over its tasks and lengths)."""
    if val_file.suffix == ".json":
        data = json.loads(val_file.read_text())
        split = data.get("args", {}).get("split")
        if split != "val":
            raise ValueError(f"{val_file} holds results on split {split!r}: select checkpoints on --split val results")
        by_name = {name: statistics.mean(row["accuracy"] for by_len in summary.values() for row in by_len.values())
                   for name, summary in data["results"].items()}
        values = {c: by_name[c.name] for c in ckpts if c.name in by_name}
    else:
        by_step = {int(row["step"]): float(row[metric]) for row in read_jsonl(val_file) if metric in row and "step" in row}
        values = {c: by_step[step_of(c)] for c in ckpts if step_of(c) in by_step}
    return max(values, key=lambda c: (values[c], -ckpts.index(c))) if values else None


def base_of(model_arg: str | None, ckpt: Path | None) -> str:
    """The base weights: a full checkpoint itself, an adapter's recorded base (--model must agree), or --model."""
    if ckpt is not None and (ckpt / "adapter_config.json").is_file():
        return adapter_base(ckpt, model_arg)
    return str(ckpt) if ckpt is not None else (model_arg or DEFAULT_MODEL)


def load_model(model_arg: str | None, ckpt: Path | None, dtype: torch.dtype, device) -> LLaDA:
    """A full-model checkpoint folder on its own, else its base model with the adapter (if any) applied."""
    model = LLaDA.from_pretrained(base_of(model_arg, ckpt), dtype=dtype, device=device)
    if ckpt is not None and (ckpt / "adapter_config.json").is_file():
        load_adapter(model, ckpt)
        model.to(device)
    return model.eval()


# -----------------------------------------------------------------------------
# CLI


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def rescore(path: Path, out_dir: Path):
    """Re-score a generations file with the current parsers (no model) and rewrite it with the new verdicts."""
    if not path.is_file():
        raise SystemExit(f"eval.py: {path}: no such generations file")
    records = score_records(read_jsonl(path))
    if not records:
        raise SystemExit(f"eval.py: {path} holds no generation records: nothing to rescore")
    no_raw = sum(r["task"] in D1_TASKS and r["score_d1"] is None for r in records)
    if no_raw:
        print(f"{no_raw} records have no raw_completion (written before eval.py kept special tokens): no d1 verdict "
              f"for them, their rows show '-' under d1")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "generations.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out_dir / "generations.jsonl")
    results = {ckpt: summarize(rs) for ckpt, rs in group_by_checkpoint(records).items()}
    old = path.parent / "results.json"  # keep the marks (last / val-selected) and args of the original run
    extra = {k: v for k, v in json.loads(old.read_text()).items() if k != "results"} if old.is_file() else {}
    marks = extra.pop("marks", {})
    print(write_results(out_dir, results, marks, {**extra, "rescored_from": str(path)}))


def denoising_steps(args, gen_length: int) -> int:
    return args.steps if args.steps is not None else int(gen_length * args.steps_ratio)


def check_args(p: argparse.ArgumentParser, args) -> None:
    """The flags, checked before anything loads: one parser error (exit status 2) names the flag, value and rule."""
    if args.rescore:
        check_paths(p, "--rescore", args.rescore)
    if args.out_dir:
        check_out_dir(p, "--out-dir", args.out_dir)
    if args.rescore is not None:
        return  # nothing else is used
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        p.error(f"--task {args.task}: unknown {', '.join(unknown) or 'nothing'}; choose from {', '.join(TASKS)}")
    if args.data_path is not None:
        if len(args.data_path.split(",")) != len(tasks):
            p.error(f"--data-path {args.data_path}: one path per --task ({len(tasks)}), comma-separated")
        check_paths(p, "--data-path", args.data_path)
    if args.countdown_test_path is not None:
        if "countdown" not in tasks or args.split != "val":
            p.error(f"--countdown-test-path {args.countdown_test_path}: used only with --task countdown --split val "
                    "(the test split is --data-path itself)")
        check_paths(p, "--countdown-test-path", args.countdown_test_path)
    for flag, value in (("--gen-length", args.gen_length), ("--seeds", args.seeds)):
        try:
            numbers = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            numbers = []
        if not numbers or (flag == "--gen-length" and min(numbers) < 1):
            p.error(f"{flag} {value}: expected comma-separated {'positive ' * (flag == '--gen-length')}integers")
    for L in ints(args.gen_length):
        blocks = L // args.block_length
        if L % args.block_length:
            p.error(f"--gen-length {L}: must be a multiple of --block-length {args.block_length}")
        if denoising_steps(args, L) < 1 or denoising_steps(args, L) % blocks:
            flag = f"--steps {args.steps}" if args.steps is not None else f"--steps-ratio {args.steps_ratio}"
            p.error(f"{flag}: the {denoising_steps(args, L)} denoising steps of --gen-length {L} must be a positive "
                    f"multiple of its {blocks} blocks")
    if args.checkpoints and args.adapter:
        p.error("--adapter and --checkpoints are exclusive (list adapter folders in --checkpoints)")
    check_paths(p, "--checkpoints", args.checkpoints)
    check_paths(p, "--adapter", args.adapter)
    check_paths(p, "--val-file", args.val_file)
    check_model_arg(p, "--model", args.model)
    resolve_device(p, args)


def build_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.RawDescriptionHelpFormatter):  # keeps the docstring's layout; shows real defaults
        def _get_help_string(self, action):
            shown = action.default not in (None, argparse.SUPPRESS) and action.default is not False
            return action.help + (" (default: %(default)s)" if shown else "")

    p = ArgumentParser(
        description=__doc__, formatter_class=Formatter,
        epilog="Checkpoint selection: with --checkpoints the LAST checkpoint is marked, and, when validation scores\n"
               "exist (--val-file), the checkpoint best on VALIDATION. Never pick a checkpoint by its test accuracy:\n"
               "run --split val over the checkpoints (or use the training log's validation metric), then report the\n"
               "test numbers of the last and the validation-selected checkpoints (--only-selected).")
    p.add_argument("--model", default=None, help=f"checkpoint folder or hub id (default: an adapter's recorded base "
                                                 f"model, else {DEFAULT_MODEL})")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder to apply to --model")
    p.add_argument("--checkpoints", default=None,
                   help="comma-separated checkpoint folders (adapters on --model, or full models), or a run folder "
                        "whose step-<N> subfolders are evaluated in step order; one result row each")
    p.add_argument("--val-file", default=None,
                   help="validation scores for the validation-selected checkpoint: a JSONL log with 'step' and "
                        "--val-metric per line, or the results.json of an `eval.py --split val` run over the same "
                        "checkpoints (default: metrics.jsonl in the run folder, when present)")
    p.add_argument("--val-metric", default="val_accuracy", help="key of the validation metric in --val-file (higher = better)")
    p.add_argument("--only-selected", action="store_true",
                   help="with --checkpoints: evaluate only the last and the validation-selected checkpoints")
    p.add_argument("--task", default="gsm8k,math,countdown,sudoku",
                   help="comma-separated tasks: gsm8k, math, countdown, sudoku; coding: humaneval, mbpp (test split), "
                        "code (KodCode, --split val only)")
    p.add_argument("--split", default="test", choices=["test", "val"], help="test set, or the validation split (for selection)")
    p.add_argument("--data-path", default=None,
                   help="local data, one comma-separated path per task (default: download): JSONL, JSON, CSV or "
                        "Parquet; .jsonl.gz/.json.gz/.csv.gz (e.g. HumanEval.jsonl.gz); or a datasets save_to_disk "
                        "folder")
    p.add_argument("--countdown-test-path", default=None,
                   help="with --split val: a local copy of d1's Countdown test file, whose items are removed from the "
                        "validation split (default: download it once)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N items of each task (quick checks)")
    p.add_argument("--style", default="eval", choices=STYLES, help="prompt style: d1's eval prompts, RL prompts, or bare question")
    p.add_argument("--prefill", default=None, help=f"text after the assistant header (default: {EVAL_PREFILL!r}; '' for --style compact)")
    p.add_argument("--gen-length", default="128,256,512", help="comma-separated completion lengths")
    p.add_argument("--block-length", type=positive_int, default=32, help="semi-autoregressive block length")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (overrides --steps-ratio)")
    p.add_argument("--steps-ratio", type=positive_float, default=0.5, help="steps = gen_length * ratio")
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy (d1)")
    p.add_argument("--threshold", type=probability, default=None, help="sampler fast mode: commit all tokens above this confidence (changes outputs)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; with temperature > 0 mean and std over seeds are reported")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass per process (d1: 8)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model weights dtype (auto: bfloat16 on a GPU, else float32)")
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--out-dir", default=None, help=f"where generations.jsonl, results.json and results.md go (default: "
                   f"{DEFAULT_OUT}; with --rescore FILE: FILE's folder)")
    p.add_argument("--rescore", nargs="?", const="", default=None, metavar="FILE",
                   help="re-score a generations JSONL (no FILE: OUT_DIR/generations.jsonl) with the current parsers, "
                        "both protocols, without loading a model; rewrites its parsed answers and scores")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.rescore is not None:  # no model, no process group: parse and score the stored completions again
        path = Path(args.rescore or Path(args.out_dir or DEFAULT_OUT) / "generations.jsonl")
        rescore(path, Path(args.out_dir) if args.out_dir else path.parent)
        return
    ddp, rank, world, args.device = init_distributed(args.device)
    run(args, rank, world)
    if ddp:
        close_distributed()


def checkpoints_to_evaluate(args, master: bool) -> tuple[list, list[str], dict[str, str]]:
    """What to evaluate: with --checkpoints, every checkpoint (or only the last and the validation-selected one),
    marked "last" / "val-selected"; else the one --model (with --adapter). Returns (checkpoints, labels, marks)."""
    if not args.checkpoints:
        return [Path(args.adapter) if args.adapter else None], [args.adapter or args.model or DEFAULT_MODEL], {}
    ckpts = list_checkpoints(args.checkpoints)
    val_file = Path(args.val_file) if args.val_file else ckpts[0].parent / "metrics.jsonl"
    if args.val_file and not val_file.is_file():
        raise FileNotFoundError(f"--val-file {val_file} does not exist")
    selected = select_by_validation(ckpts, val_file, args.val_metric) if val_file.is_file() else None
    marks = {ckpts[-1].name: "last"}
    if selected is not None:
        marks[selected.name] = "last, val-selected" if selected == ckpts[-1] else "val-selected"
    elif master:
        print(f"no validation-selected checkpoint: {val_file} is missing or has no {args.val_metric!r} at a checkpoint "
              "step")
    if args.only_selected:
        ckpts = [c for c in ckpts if c.name in marks]
    return ckpts, [c.name for c in ckpts], marks


def load_eval_tasks(args) -> dict[str, list[dict]]:
    """The items of every --task, by task; a task without items is an error (an empty table would look like a
    result)."""
    by_task = defaultdict(list)
    for ex in load_tasks(args.task, args.split, args.data_path, args.style, args.limit,
                         test_path=args.countdown_test_path):
        by_task[ex["task"]].append(ex)
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    paths = args.data_path.split(",") if args.data_path else [None] * len(tasks)  # load_tasks checked the counts
    for task, path in zip(tasks, paths):
        if not by_task[task]:
            raise SystemExit(f"eval.py: no {task} {args.split} items in {(path or '').strip() or 'the downloaded set'}"
                             + (" (--limit 0)" if args.limit == 0 else ""))
    return by_task


def run(args, rank: int, world: int):
    """Generate and score every (checkpoint, length, task, seed); rank 0 appends each group's records to
    generations.jsonl when it is done (a crash keeps them) and writes results.json / results.md at the end."""
    master, out_dir = rank == 0, Path(args.out_dir or DEFAULT_OUT)
    lengths, seeds = ints(args.gen_length), ints(args.seeds)
    if args.temperature == 0 and len(seeds) > 1:
        seeds = seeds[:1]
        if master:
            print(f"temperature 0 is deterministic: using seed {seeds[0]} only")
    prefill = args.prefill if args.prefill is not None else ("" if args.style == "compact" else EVAL_PREFILL)
    steps = {L: denoising_steps(args, L) for L in lengths}
    ckpts, labels, marks = checkpoints_to_evaluate(args, master)
    by_task = load_eval_tasks(args)
    tokenizer = load_tokenizer(base_of(args.model, ckpts[0]))
    if master:
        for task, exs in by_task.items():
            print(f"{task}: {len(exs)} items, {math.ceil(len(exs) / world)} per process ({world} processes), "
                  f"batches of {args.batch_size}")
        print(f"gen lengths {lengths}, steps {[steps[L] for L in lengths]}, block {args.block_length}, "
              f"temperature {args.temperature}, seeds {seeds}, checkpoints {labels}, marks {marks}")
        out_dir.mkdir(parents=True, exist_ok=True)
        open(out_dir / "generations.jsonl", "w").close()
    all_records = []
    for ckpt, label in zip(ckpts, labels):
        model = load_model(args.model, ckpt, getattr(torch, args.dtype), args.device)
        for L, (task, exs), seed in itertools.product(lengths, by_task.items(), seeds):
            t0 = time.time()
            records = evaluate(model, tokenizer, exs, L, args.block_length, steps[L], args.temperature,
                               args.batch_size, prefill, seed, rank, world, progress=master, threshold=args.threshold)
            if not master:
                continue
            wall = time.time() - t0
            for r in records:
                r.update(checkpoint=label, wall_s=wall)
            with open(out_dir / "generations.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            all_records += records
            d1 = accuracy(records, "score_d1")
            print(f"{label} {task} L={L} seed={seed}: {100 * accuracy(records):.2f}% fixed, "
                  + ("-" if d1 is None else f"{100 * d1:.2f}%") + f" d1, of {len(records)} items in {wall:.0f}s")
        del model
    if master:
        results = {label: summarize(rs) for label, rs in group_by_checkpoint(all_records).items()}
        print(write_results(out_dir, results, marks, {"args": vars(args), "world": world}))


if __name__ == "__main__":
    run_cli(main)
