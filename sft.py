"""Stage 1 of d1: masked SFT of LLaDA (LoRA by default, or full fine-tuning), one flat script.

A step is one optimizer step (one AdamW update over the global batch), as in d1 and every HF trainer, and in
diffu_grpo.py: --max-steps, --save-every, --eval-every, checkpoint names and metrics.jsonl count them.
`--dry-run` prints the run plan (global batch, examples, optimizer steps, what differs from d1) and exits.

Each example is the chat-templated prompt followed by the answer, `<|eot_id|>` and EOS padding. Per sequence
a rate t ~ U(0, 1) is mapped to p = eps + (1 - eps) t; every ANSWER token (EOS padding included) becomes [MASK]
with probability p, prompt tokens never; the loss is the cross-entropy on the masked answer tokens weighted by
1/p, summed per sequence, divided by that sequence's answer length and averaged over the batch (LLaDA's
per-sequence form). With no prompt (answer_mask all True) `sft_loss` is LLaDA's pretraining loss;
`--init-from-scratch tiny` trains a small random model on generated prompt/answer pairs with the same code.

Deliberate deviations from d1 (public code):
- The chat template's trailing assistant header belongs to the PROMPT and is never a target. d1 templated
  prompt + answer as a conversation, so every target ended in a dangling
  `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n` before the EOS padding.
- EOS padding up to the longest sequence of the GLOBAL batch (all micro-batches and ranks of one optimizer
  step; plain shuffled batches, no length bucketing, so short answers keep long EOS runs and the model learns
  to stop), not up to 4096 for every example: far fewer EOS targets per example than d1 trained.
- Per-sequence normalisation (LLaDA's guideline) instead of d1's batch-token normaliser (equal at batch 1).
  Together with padding to the global batch and noise keyed on the global example index, a global batch gives
  the same loss and gradient however it is split over ranks and micro-steps.
- Held-out loss on a fixed 1% split with fixed noise; training is exactly resumable (dropout is re-seeded
  from (seed, step, rank) every step instead of saving RNG state; the data order and the lr are functions of
  the step). With LoRA dropout > 0, dropout masks depend on the rank, so N processes == 1 process only at 0.
Full fine-tuning (--lora-r 0) keeps fp32 master weights, gradients and AdamW state: ~16 bytes/parameter, 128 GB
at 8B. Plain DDP replicates them on every GPU (fine for small models); --fsdp shards them over the ranks
(FSDP2: train_utils.shard_fsdp, one unit per block + head + root, bf16 compute, fp32 reduce) and writes sharded
checkpoints (torch.distributed.checkpoint; --export converts one to an HF-layout model). --fsdp is explicit,
never automatic: with LoRA, DDP stays the path. Start-up prints the per-GPU memory budget (train_utils.memory_budget,
computed) and refuses to start when it exceeds the GPU's memory. Flags are checked before anything loads; a used
--out-dir is refused unless --resume auto (continue) or --overwrite (start over), see train_utils.claim_out_dir.

CPU (tiny model from scratch, a prompt/answer JSONL such as {"prompt": "sort 312", "answer": "123"}):
    python sft.py --init-from-scratch tiny --data pairs.jsonl --lora-r 0 --lr 1e-3 --epochs 5 \\
        --batch-size 8 --grad-accum 1 --device cpu --out-dir out/sft-tiny
The plan only (no model loaded):
    python sft.py --data s1k --dry-run 8 --grad-accum 1
1 GPU (d1's run: s1K, LoRA r=128, effective batch 8):
    python sft.py --data s1k --grad-checkpointing --merge --out-dir out/sft --device cuda-s1k
8 GPUs:
    torchrun --standalone --nproc_per_node=8 sft.py --data s1k --grad-accum 1 --grad-checkpointing --merge \\
        --out-dir out/sft-s1k
8 GPUs, full fine-tuning (sharded):
    torchrun --standalone --nproc_per_node=8 sft.py --data s1k --lora-r 0 --fsdp --grad-accum 1 --grad-checkpointing \\
        --merge --out-dir out/sft-s1k-full
2 nodes x 8 GPUs (the same line on each node, NODE_RANK 0 and 1; out-dir on a filesystem both nodes see):
    torchrun --nnodes 2 --nproc_per_node 8 --node-rank $NODE_RANK --rdzv-backend c10d \\
        --rdzv-endpoint $HOST:29500 sft.py --data s1k --lora-r 0 --fsdp --grad-accum 1 \\
        --grad-checkpointing --merge --out-dir /shared/out/sft-s1k-full
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import S1K_HUB, format_prompt, load_s1k, load_sft_file
from cli import (ArgumentParser, HelpFormatter, bounded, check_lora_targets, check_model_arg, check_paths,
                 check_training_run, nonneg_float, nonneg_int, positive_float, positive_int, run_cli)
from model import (Config, LLaDA, LORA_TARGETS, apply_lora, example_generator, load_tokenizer, make_char_tokenizer,
                   mask_tokens, merge_lora, preset_config, resolve_checkpoint, row_uniforms)
from train_utils import (MetricsLog, check_memory_budget, claim_out_dir, close_distributed, export_sharded_checkpoint,
                         init_distributed, memory_budget, resume_training, save_pretrained_fsdp, save_run_checkpoint,
                         shard_fsdp)

# Random streams are told apart by the number of keys given to example_generator:
# (seed,) the validation split, (seed, epoch) the data order, (seed, step, example) t and the mask,
# (seed, step, rank, 0) dropout. Evaluation uses step EVAL_STEP, so its noise is the same at every eval.
VAL_SPLIT_SEED = 42  # the held-out split does not move with --seed: val losses of different seeds compare
EVAL_STEP = -1

# -----------------------------------------------------------------------------
# Examples and batches


def encode_example(tokenizer, prompt: str, answer: str, max_length: int) -> tuple[list[int], int, bool]:
    """Token ids of chat-template(prompt) + answer + <|eot_id|>, cut to max_length at the answer end.
    Returns (ids, prompt_length, truncated). The assistant header ends the prompt: it is never a target."""
    p = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    a = tokenizer(answer.strip() + "<|eot_id|>", add_special_tokens=False)["input_ids"]  # strip: as the template would
    ids = (p + a)[:max_length]
    return ids, len(p), len(ids) < len(p) + len(a)


def make_batch(examples: list[tuple[list[int], int]], pad_to: int, eos_id: int, device="cpu"):
    """Right-pad (ids, prompt_length) pairs with EOS to pad_to. Returns input_ids (B, L) and answer_mask (B, L)
    bool: True from the end of the prompt on, so the EOS padding is answer (a target the model learns to emit)."""
    ids = torch.full((len(examples), pad_to), eos_id, dtype=torch.long)
    for i, (row, _) in enumerate(examples):
        ids[i, :len(row)] = torch.tensor(row)
    prompt_len = torch.tensor([n for _, n in examples])
    answer_mask = torch.arange(pad_to)[None, :] >= prompt_len[:, None]
    return ids.to(device), answer_mask.to(device)


def draw_noise(seed: int, step: int, indices: list[int], answer_mask: torch.Tensor):
    """Per row: t (B,) in [0, 1) and uniforms u (B, L), both from example_generator(seed, step, GLOBAL index),
    so a row's noise does not depend on which rank or micro-batch holds it. u has one draw per answer token
    (prompt positions get 1.0: never masked), so it does not depend on the prompt length either."""
    gens = [example_generator(seed, step, i) for i in indices]
    t = torch.stack([torch.rand((), generator=g) for g in gens]).to(answer_mask.device)
    return t, row_uniforms(gens, answer_mask)


# -----------------------------------------------------------------------------
# The loss


def sft_loss(model: LLaDA, input_ids: torch.Tensor, answer_mask: torch.Tensor, t: torch.Tensor, u: torch.Tensor,
             mask_id: int, attention_mask: torch.Tensor | None = None, eps: float = 1e-3,
             reduction: str = "mean") -> torch.Tensor:
    """LLaDA's masked SFT loss. input_ids (B, L) clean tokens; answer_mask (B, L) bool, the positions that may be
    masked and are targets (answer + <|eot_id|> + EOS padding); t (B,) raw rates in [0, 1), used as
    p = eps + (1 - eps) t; u (B, L) uniforms (token masked iff answer and u < p); attention_mask (B, L) or None
    (attend to everything: EOS padding is content here). Loss of row b:
        sum over masked answer tokens of CE / p_b, divided by the number of answer tokens of row b.
    reduction "mean" (batch average), "sum" or "none" (B,). The head runs on the masked positions only."""
    p = eps + (1 - eps) * t.float()  # (B,)
    noisy, masked = mask_tokens(input_ids, answer_mask, p, u, mask_id)
    h = model.hidden_states(noisy, attention_mask)  # (B, L, D)
    rows, cols = masked.nonzero(as_tuple=True)  # the M masked answer tokens
    logits = model.head(h[rows, cols]).float()  # (M, V): fp32 log-softmax inside cross_entropy
    ce = F.cross_entropy(logits, input_ids[rows, cols], reduction="none")  # (M,)
    per_seq = torch.zeros(len(input_ids), device=ce.device).index_add(0, rows, ce / p[rows])
    per_seq = per_seq / answer_mask.sum(1).clamp(min=1)
    return {"mean": per_seq.mean, "sum": per_seq.sum, "none": lambda: per_seq}[reduction]()


class MaskedSFT(nn.Module):
    """Runs sft_loss as a module's forward, so DDP's forward (which arms the gradient all-reduce) wraps it."""

    def __init__(self, model: LLaDA, eps: float):
        super().__init__()
        self.model, self.eps = model, eps

    def forward(self, input_ids, answer_mask, t, u):
        return sft_loss(self.model, input_ids, answer_mask, t, u, self.model.config.mask_token_id, eps=self.eps,
                        reduction="none")


@torch.no_grad()
def evaluate(model: LLaDA, val, pad_to: int, batch_size: int, seed: int, eps: float, device, amp, rank=0, world=1):
    """Mean held-out loss with fixed noise; every row padded to pad_to (the longest val example), so the number
    does not depend on batch size or world size. Rows are sharded over ranks and the sums all-reduced."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device)  # (sum of per-sequence losses, rows)
    mine = list(range(rank, len(val), world))
    # Every rank runs the same number of forwards (FSDP's all-gathers are collective): a rank whose share is
    # used up runs row 0 once more and does not count it.
    for s in range(math.ceil(math.ceil(len(val) / world) / batch_size)):
        idx = mine[s * batch_size:(s + 1) * batch_size]
        ids, ans = make_batch([val[i] for i in idx or [0]], pad_to, model.config.eos_token_id, device)
        t, u = draw_noise(seed, EVAL_STEP, idx or [0], ans)
        with amp():
            loss = sft_loss(model, ids, ans, t, u, model.config.mask_token_id, eps=eps, reduction="sum")
        total[0] += loss if idx else 0.0
        total[1] += len(idx)
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


# -----------------------------------------------------------------------------
# Schedule, data order, checkpoints


def lr_at(step: int, total_steps: int, base_lr: float, warmup: int = 0, schedule: str = "linear") -> float:
    """lr of optimizer step `step` (0-based): linear warmup, then linear/cosine decay to 0 or constant."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return base_lr * (1 - progress)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


@functools.lru_cache(maxsize=2)  # one epoch's order serves its every step
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """One global order per (seed, epoch), the same on every rank; ranks take disjoint slices of it."""
    return torch.randperm(n, generator=example_generator(seed, epoch)).tolist()


# -----------------------------------------------------------------------------
# Training


DATA_FORMATS = ("JSONL, JSON (a list, or JSON Lines as Dataset.to_json writes), CSV or Parquet; .jsonl.gz/.json.gz/"
                ".csv.gz; or a folder written by datasets' save_to_disk")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Masked SFT of LLaDA (d1 stage 1). A step is one optimizer step.",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", default="GSAI-ML/LLaDA-8B-Instruct", help="checkpoint folder or hub id to fine-tune")
    p.add_argument("--init-from-scratch", default=None, choices=["tiny", "demo", "llada-8b"],
                   help="train a randomly initialised model of this preset instead of loading --model")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder/hub id (default: --model's, or a character tokenizer with "
                        "--init-from-scratch)")
    p.add_argument("--data", default="s1k",
                   help="'s1k' (d1's SFT data, simplescaling/s1K), 's1k-1.1' (the same questions with DeepSeek-R1 "
                        f"traces), or your own file of 'prompt'/'answer' rows: {DATA_FORMATS}")
    p.add_argument("--data-path", default=None,
                   help=f"a local copy of --data s1k or s1k-1.1 instead of the hub ({DATA_FORMATS})")
    p.add_argument("--max-length", type=positive_int, default=4096,
                   help="token cap per example; longer answers are cut")
    p.add_argument("--pad-answers-to", type=nonneg_int, default=0,
                   help="EOS-pad every answer (incl. <|eot_id|>) to at least this many tokens, e.g. the RL "
                        "generation length, so the model learns to stop there (d1 padded whole sequences to "
                        "4096); 0 = pad only to the longest sequence of the batch")
    p.add_argument("--val-frac", type=bounded(float, 0.0, 1.0, hi_open=True), default=0.01,
                   help="fraction of examples held out for the eval loss (0 = none)")
    p.add_argument("--eps", type=bounded(float, 0.0, 1.0, lo_open=True), default=1e-3,
                   help="mask rate p = eps + (1 - eps) t, t ~ U(0, 1)")
    p.add_argument("--lora-r", type=nonneg_int, default=128, help="LoRA rank; 0 = full fine-tuning")
    p.add_argument("--lora-alpha", type=positive_float, default=256.0, help="LoRA alpha (scale alpha / r)")
    p.add_argument("--lora-dropout", type=bounded(float, 0.0, 1.0, hi_open=True), default=0.05,
                   help="dropout on the LoRA input")
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj",
                   help=f"comma-separated block Linear layers to adapt, from {','.join(LORA_TARGETS)}")
    p.add_argument("--epochs", type=positive_int, default=20,
                   help="passes over the training split (the lr schedule spans them all)")
    p.add_argument("--max-steps", type=nonneg_int, default=None,
                   help="stop after this many OPTIMIZER steps (default: all epochs; the lr schedule still spans them)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="micro-batch per device")
    p.add_argument("--grad-accum", type=positive_int, default=8, help="micro-batches per optimizer step on each device")
    p.add_argument("--lr", type=nonneg_float, default=1e-5, help="peak learning rate (AdamW); 0 trains nothing")
    p.add_argument("--lr-schedule", default="linear", choices=["linear", "cosine", "constant"],
                   help="decay to 0 after warmup, or constant")
    p.add_argument("--warmup-steps", type=nonneg_int, default=0, help="linear warmup steps")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.1, help="AdamW weight decay (d1: 0.1)")
    p.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="max global grad norm; 0 = no clipping")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype (autocast; auto: bfloat16 on a GPU, else float32); LoRA keeps base weights in "
                        "it, full FT keeps fp32 master weights")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--fsdp", action="store_true",
                   help="full fine-tuning (--lora-r 0) under torchrun: shard weights, gradients and AdamW state over "
                        "the ranks (FSDP2); checkpoints are sharded (torch.distributed.checkpoint)")
    p.add_argument("--export", default=None, metavar="CKPT",
                   help="convert the sharded checkpoint folder CKPT to an HF-layout model in CKPT-hf (one process, "
                        "CPU, in --dtype) and exit")
    p.add_argument("--eval-every", type=nonneg_int, default=100,
                   help="eval loss every N steps (and at start/end); 0 = off")
    p.add_argument("--save-every", type=nonneg_int, default=100, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--keep-last", type=nonneg_int, default=3, help="keep the newest N checkpoints; 0 = keep all")
    p.add_argument("--resume", default=None,
                   help="checkpoint folder, or 'auto' = newest in --out-dir (if any); metrics.jsonl keeps one line per step")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out-dir (checkpoints, metrics) and start over; without it (or "
                        "--resume) a non-empty --out-dir is refused")
    p.add_argument("--merge", action="store_true", help="at the end write out_dir/merged: a full HF-layout model")
    p.add_argument("--out-dir", default="out/sft", help="checkpoints, metrics.jsonl, merged model")
    p.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log the metrics to this Weights & Biases project (needs `pip install wandb`)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write the metrics as TensorBoard events to DIR (needs `pip install tensorboard`)")
    p.add_argument("--seed", type=int, default=0, help="data order, noise, dropout, LoRA/scratch init")
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--dry-run", type=positive_int, nargs="?", const=0, default=None, metavar="WORLD",
                   help="print the run plan for WORLD processes (no WORLD: this launch's) and exit, loading no model")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked before anything loads: one parser error (exit status 2) names the flag, value and rule."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.fsdp and (args.lora_r > 0 or ("RANK" not in os.environ and args.dry_run is None)):
        p.error("--fsdp shards full fine-tuning: use it with --lora-r 0, under torchrun (LoRA runs on DDP)")
    if args.data_path and args.data not in S1K_HUB:
        p.error("--data-path is a local copy of s1K: use it with --data s1k or s1k-1.1 (your own file goes to --data)")
    if args.data not in S1K_HUB:
        check_paths(p, "--data", args.data)
    check_paths(p, "--data-path", args.data_path)
    if args.init_from_scratch is None:
        check_model_arg(p, "--model", args.model)
    check_model_arg(p, "--tokenizer", args.tokenizer)
    if args.lora_r > 0:
        check_lora_targets(p, "--lora-targets", args.lora_targets)
    check_training_run(p, args, "the weights never move")
    return args


# -----------------------------------------------------------------------------
# The run plan: what a launch will do, printed before the model loads (--dry-run: only that)

S1K_EXAMPLES = 1000  # simplescaling/s1K: 1,000 question / trajectory / attempt rows
D1_GLOBAL_BATCH = 8  # d1's effective batch (launch script): 2,460 optimizer steps over 20 epochs of s1K
RECIPE = ("data", "max_length", "eps", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "epochs", "lr",
          "lr_schedule", "warmup_steps")  # the flags of d1's SFT recipe (the parser defaults are d1's values)


def run_plan(args, world: int, n_examples: int | None) -> str:
    """Optimizer steps, epochs and batch layout of an SFT launch, and where it departs from d1's recipe."""
    global_batch = args.batch_size * args.grad_accum * world
    lines = [f"SFT run plan: {world} process{'es' if world > 1 else ''}, global batch {global_batch} = micro-batch "
             f"{args.batch_size} x grad accum {args.grad_accum} x {world}; a step is one optimizer step"]
    if n_examples is None:
        lines.append("  examples          counted when the data loads (steps follow from them)")
    else:
        n_val = max(1, round(n_examples * args.val_frac)) if args.val_frac > 0 else 0
        per_epoch = (n_examples - n_val) // global_batch
        total = per_epoch * args.epochs
        stop = min(total, args.max_steps) if args.max_steps is not None else total
        lines += [f"  examples          {n_examples:,}: {n_examples - n_val:,} train, {n_val} held out for the eval loss "
                  "(before examples whose prompt exceeds --max-length are dropped)",
                  f"  optimizer steps   {total:,} = {per_epoch:,} per epoch x {args.epochs} epochs"
                  + (f"; this launch stops at {stop:,}" if stop < total else "")]
    lines.append(f"  learning rate     {args.lr:g} peak, {args.lr_schedule} schedule, {args.warmup_steps} warmup steps")
    d1 = build_parser().parse_args([])
    diffs = [f"--{k.replace('_', '-')} {getattr(args, k)} (d1: {getattr(d1, k)})" for k in RECIPE
             if getattr(args, k) != getattr(d1, k)]
    if global_batch != D1_GLOBAL_BATCH:
        diffs.append(f"global batch {global_batch} (d1: {D1_GLOBAL_BATCH})")
    lines.append(f"  vs d1's recipe    {'; '.join(diffs) if diffs else 'the same'}; always: prompt header not a target, "
                 "EOS padding to the batch's longest, per-sequence loss (module docstring)")
    return "\n".join(lines)


def load_examples(args) -> list[dict]:
    """The SFT pairs of --data: s1K or s1K-1.1 (from the hub or --data-path), or the user's file."""
    return load_s1k(args.data_path, S1K_HUB[args.data]) if args.data in S1K_HUB else load_sft_file(args.data)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    if args.export:
        out = export_sharded_checkpoint(args.export, args.export.rstrip("/") + "-hf", getattr(torch, args.dtype))
        print(f"wrote {out}")
        return
    if args.dry_run is not None:
        n = S1K_EXAMPLES if args.data in S1K_HUB and args.data_path is None else len(load_examples(args))  # cheap
        print(run_plan(args, args.dry_run or int(os.environ.get("WORLD_SIZE", 1)), n))
        return
    # Rank 0 claims --out-dir before anything loads (torchrun sets RANK before the process group exists).
    claim = claim_out_dir(args.out_dir, resume=args.resume is not None, overwrite=args.overwrite)
    with claim if int(os.environ.get("RANK", 0)) == 0 else nullcontext():
        run(args)


def prepare_data(args, tokenizer, global_batch: int, log) -> tuple[list, list]:
    """The examples of --data tokenized as (ids, prompt length) and split into train / held-out val. Every rank
    holds all of it (small) and takes its slice of each global batch."""
    examples = load_examples(args)
    encoded, n_trunc, n_dropped = [], 0, 0
    for ex in examples:
        ids, n_prompt, cut = encode_example(tokenizer, ex["prompt"], ex["answer"], args.max_length)
        if n_prompt >= len(ids):  # the prompt alone fills --max-length: nothing left to train on
            n_dropped += 1
            continue
        n_trunc += cut
        encoded.append((ids, n_prompt))
    if not encoded:
        raise ValueError(f"{args.data_path or args.data}: every one of its {n_dropped} prompts fills --max-length "
                         f"{args.max_length} tokens, leaving no answer token to train on: raise --max-length")
    perm = torch.randperm(len(encoded), generator=example_generator(VAL_SPLIT_SEED)).tolist()
    n_val = max(1, round(len(encoded) * args.val_frac)) if args.val_frac > 0 else 0
    val = [encoded[i] for i in sorted(perm[:n_val])]
    train = [encoded[i] for i in sorted(perm[n_val:])]
    log(f"examples {len(examples)}: train {len(train)}, val {len(val)}, truncated at {args.max_length} tokens "
        f"{n_trunc}, dropped (prompt too long) {n_dropped}, longest {max(len(e[0]) for e in encoded)} tokens")
    if len(train) < global_batch:  # the last incomplete global batch of an epoch is dropped
        raise ValueError(f"{len(train)} training examples are fewer than one global batch of {global_batch} "
                         f"(--batch-size {args.batch_size} x --grad-accum {args.grad_accum} x "
                         f"{global_batch // (args.batch_size * args.grad_accum)} processes): lower them")
    return train, val


def padded_length(example: tuple[list[int], int], pad_answers_to: int) -> int:
    """Tokens of (ids, prompt length) once its answer is EOS-padded to at least pad_answers_to."""
    ids, n_prompt = example
    return len(ids) + max(0, pad_answers_to - (len(ids) - n_prompt))


def build_model(args, tokenizer, longest: int, world: int, device: str, dtype: torch.dtype, log):
    """The model to train: LoRA on frozen base weights in --dtype (fp32 adapters), or fp32 master weights for full
    fine-tuning, sharded with --fsdp. Checks the per-GPU memory budget first. Returns (model, trainable params)."""
    lora = args.lora_r > 0
    targets = [name.strip() for name in args.lora_targets.split(",")]
    cfg = (preset_config(args.init_from_scratch, tokenizer) if args.init_from_scratch
           else Config.from_json(resolve_checkpoint(args.model) / "config.json"))
    budget = memory_budget(cfg, world, args.lora_r, fsdp=args.fsdp, lora_targets=targets,
                           compute_bytes=dtype.itemsize, micro_batch=args.batch_size, seq_len=longest,
                           grad_checkpointing=args.grad_checkpointing, grad_accum=args.grad_accum)
    log(check_memory_budget(budget, device))  # raises (on every rank) when it cannot fit the GPU
    param_dtype = dtype if lora else torch.float32
    load_device = "cpu" if args.fsdp else device  # FSDP moves only this rank's shard to the GPU
    if args.init_from_scratch:
        model = LLaDA(cfg).init_weights(args.seed).to(load_device, param_dtype)
    else:
        model = LLaDA.from_pretrained(args.model, dtype=param_dtype, device=load_device)
    if lora:
        apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, targets, seed=args.seed)
    if args.fsdp:  # before the optimizer: sharding replaces the parameters
        shard_fsdp(model, device, mp_dtype=dtype if device.startswith("cuda") and dtype != torch.float32 else None)
    model.gradient_checkpointing = args.grad_checkpointing
    params = [q for q in model.parameters() if q.requires_grad]
    log(f"trainable parameters {sum(q.numel() for q in params):,} of {model.num_params():,} "
        f"({'LoRA r=%d' % args.lora_r if lora else 'full fine-tuning'}, compute {args.dtype})")
    return model, params


def train_step(loss_fn, model, optimizer, params, train, batch: list[int], step: int, args, rank: int, world: int,
               device, amp, ddp: bool) -> tuple[float, float, int]:
    """One optimizer step over the global batch (global example indices): this rank's micro-batches with grad
    accumulation (DDP/FSDP reduce on the last), clip, AdamW. Returns (global mean loss, grad norm, padded length)."""
    pad_to = max(padded_length(train[i], args.pad_answers_to) for i in batch)  # the GLOBAL batch's: split-invariant
    # Dropout draws from the global RNG: re-seed it from (seed, step, rank) so a resumed run matches.
    torch.manual_seed(example_generator(args.seed, step, rank, 0).initial_seed())
    loss_sum = torch.zeros((), device=device)
    for a in range(args.grad_accum):
        lo = (a * world + rank) * args.batch_size
        idx = batch[lo:lo + args.batch_size]
        ids, ans = make_batch([train[i] for i in idx], pad_to, model.config.eos_token_id, device)
        t, u = draw_noise(args.seed, step, idx, ans)
        last = a == args.grad_accum - 1
        if args.fsdp:  # FSDP's no_sync: keep unsharded gradients until the last micro-step, then reduce-scatter
            model.set_requires_gradient_sync(last)
        with loss_fn.no_sync() if ddp and not args.fsdp and not last else nullcontext():  # all-reduce on the last
            with amp():
                per_seq = loss_fn(ids, ans, t, u)  # (B,)
            # DDP/FSDP average over ranks, so divide by this rank's share: the gradient of the global mean.
            (per_seq.sum() / (args.batch_size * args.grad_accum)).backward()
        loss_sum += per_seq.detach().sum()
    if ddp:
        dist.all_reduce(loss_sum)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.item() / len(batch), grad_norm.item(), pad_to


def run(args):
    """The run itself, once main has checked the flags and claimed --out-dir."""
    ddp, rank, world, device = init_distributed(args.device)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    global_batch = args.batch_size * args.grad_accum * world
    log(run_plan(args, world, S1K_EXAMPLES if args.data in S1K_HUB and args.data_path is None else None))
    dtype = getattr(torch, args.dtype)
    if args.init_from_scratch:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else make_char_tokenizer()
    else:
        tokenizer = load_tokenizer(args.tokenizer or args.model)
    train, val = prepare_data(args, tokenizer, global_batch, log)
    steps_per_epoch = len(train) // global_batch
    total_steps = args.epochs * steps_per_epoch
    stop_step = min(total_steps, args.max_steps) if args.max_steps is not None else total_steps
    log(f"steps per epoch {steps_per_epoch}, total steps {total_steps} ({args.epochs} epochs), running to {stop_step}")
    longest = max(padded_length(e, args.pad_answers_to) for e in train)
    model, params = build_model(args, tokenizer, longest, world, device, dtype, log)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    amp = lambda: torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)  # noqa: E731

    out_dir = Path(args.out_dir)
    ckpt, start_step = resume(args, out_dir, model, optimizer, global_batch, total_steps, log)
    loss_fn = MaskedSFT(model, args.eps)  # DDP must wrap the module whose forward computes the loss
    if ddp and not args.fsdp:  # (FSDP hooks live on the model itself)
        loss_fn = DDP(loss_fn, device_ids=[device] if device.startswith("cuda") else None)
    # (a fresh start drops every line of an earlier metrics.jsonl; a resumed one those after its checkpoint)
    metrics = MetricsLog(out_dir / "metrics.jsonl", start_step if ckpt else -1, args.wandb, args.tensorboard,
                         vars(args)) if master else None
    val_pad = max((padded_length(e, args.pad_answers_to) for e in val), default=0)

    def validate(step: int):  # the held-out loss, logged as its own metrics line
        if val and args.eval_every > 0:
            val_loss = evaluate(model, val, val_pad, args.batch_size, args.seed, args.eps, device, amp, rank, world)
            if master:
                tqdm.write(f"step {step:6d} | val loss {val_loss:.4f}")
                metrics.write(dict(step=step, val_loss=val_loss))

    model.train()
    if start_step == 0:
        validate(0)
    pbar = tqdm(total=stop_step, initial=start_step, disable=not master, desc="SFT optimizer steps", dynamic_ncols=True)
    for step in range(start_step, stop_step):
        t0 = time.time()
        epoch, b = divmod(step, steps_per_epoch)
        batch = epoch_order(len(train), args.seed, epoch)[b * global_batch:(b + 1) * global_batch]  # global indices
        lr = lr_at(step, total_steps, args.lr, args.warmup_steps, args.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm, pad_to = train_step(loss_fn, model, optimizer, params, train, batch, step, args, rank, world,
                                             device, amp, ddp)
        dt = time.time() - t0
        pbar.update(1)
        if master:
            tqdm.write(f"step {step + 1:6d}/{total_steps} | loss {loss:.4f} | lr {lr:.3e} | grad norm {grad_norm:.4f} "
                       f"| {global_batch * pad_to / dt:8.0f} tok/s | {dt * 1000:.0f} ms")
            metrics.write(dict(step=step + 1, epoch=epoch, loss=loss, lr=lr, grad_norm=grad_norm, seq_len=pad_to,
                               tok_per_s=global_batch * pad_to / dt))
        done = step + 1 == stop_step
        if args.eval_every > 0 and ((step + 1) % args.eval_every == 0 or done):
            validate(step + 1)
        if (args.save_every > 0 and (step + 1) % args.save_every == 0) or done:
            state = dict(step=step + 1, epoch=(step + 1) / steps_per_epoch, global_batch=global_batch,
                         total_steps=total_steps, seed=args.seed, args=vars(args))
            save_run_checkpoint(out_dir, step + 1, model, optimizer, state, tokenizer, fsdp=args.fsdp, master=master,
                                base_model=None if args.init_from_scratch else args.model,  # None: saved with it
                                keep_last=args.keep_last)
            if ddp:
                dist.barrier()  # nobody reads a checkpoint before it is complete
    pbar.close()
    if start_step >= stop_step:
        log(f"nothing to do: already at step {start_step} of {stop_step}")
    finish(args, model, tokenizer, out_dir, dtype, master, log)
    if metrics is not None:
        metrics.close()
    if ddp:
        close_distributed()


def resume(args, out_dir: Path, model, optimizer, global_batch: int, total_steps: int, log) -> tuple[Path | None, int]:
    """--resume: restore the weights and AdamW state; returns (the checkpoint or None, the optimizer step reached).
    The data order and the lr schedule are functions of the step, the global batch and the seed: those must match."""
    ckpt, state = resume_training(args.resume, out_dir, model, optimizer, args.fsdp)
    if args.resume == "auto":
        log(f"resume auto: {ckpt or 'no checkpoint in ' + str(out_dir) + ', starting fresh'}")
    if state is None:
        return None, 0
    for key, value in [("global_batch", global_batch), ("total_steps", total_steps), ("seed", args.seed)]:
        if state[key] != value:
            raise ValueError(f"{ckpt} was trained with {key}={state[key]}, this run has {value}: "
                             "the data order and lr schedule would not continue")
    log(f"resumed from {ckpt} at step {state['step']}")
    return ckpt, state["step"]


def finish(args, model, tokenizer, out_dir: Path, dtype: torch.dtype, master: bool, log) -> None:
    """--merge: OUT/merged, a full HF-layout model (LoRA merged in; with FSDP gathered to rank 0)."""
    if args.merge and args.fsdp:  # every rank takes part
        save_pretrained_fsdp(model, out_dir / "merged", tokenizer, dtype)
        log(f"wrote the consolidated model to {out_dir / 'merged'}")
    elif args.merge and master:
        if args.lora_r > 0:
            merge_lora(model)
        model.to(dtype).save_pretrained(out_dir / "merged", tokenizer=tokenizer)
        log(f"wrote merged model to {out_dir / 'merged'}")


if __name__ == "__main__":
    run_cli(main)
