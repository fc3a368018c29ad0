"""diffu-GRPO: policy-gradient RL for a masked diffusion LM (stage 2 of d1).

A STEP IS ONE OPTIMIZER STEP (one AdamW update), as in d1 and every HF trainer: `--max-steps`, d1's per-task
counts (GSM8K 7700, MATH 6600, Countdown 5000, Sudoku 3800), `--save-every`, `--eval-every`, checkpoint names
`step-NNNNNN`, the progress bar and metrics.jsonl all count optimizer steps, so `step-007700` is comparable with
d1's checkpoint-7700. A ROLLOUT ROUND feeds mu optimizer steps:
  1. sample G completions for each of the round's prompts with the masked sampler (sample.generate);
  2. reward them (rewards.py); advantage = reward - mean of its group (optionally / std);
  3. draw mu mask seeds and store them with the rollout; with them compute, once and under no_grad, the
     old-policy log-probs (masks 1..mu-1) and the reference log-probs (all mu masks) of every completion;
  4. take mu optimizer steps; inner step k uses mask k for the policy, old and reference log-probs alike, and
     every optimizer step uses ALL completions of the round (d1: 16 prompts x 6 = 96 per step, mu = 12, so the
     GSM8K run is ceil(7700 / 12) = 642 rounds of 16 prompts).
When --max-steps is not a multiple of mu, the last round stops after the remaining steps. Checkpoints and
validation happen at round boundaries: at the end of the first round that reaches each multiple of --save-every
(--eval-every), named by the optimizer step reached (mu = 12, --save-every 500: step-000504, step-001008, ...),
and at the end of the run. `--dry-run` prints the run plan (rounds, steps, prompts, epochs, forwards, tokens, and
what differs from d1's recipe) and exits without loading anything.

Log-probs come from d1's one-step mean-field estimator (`completion_logprobs`): the prompt is masked with
probability p_mask_prompt (0.15), the WHOLE completion is masked, one forward pass, and each completion
token's log-prob is read off the logits at its position. Loss per token (clipped surrogate + k3 KL):
  -min(r A, clip(r, 1-eps, 1+eps) A) + beta (exp(ref - logp) - (ref - logp) - 1),   r = exp(logp - old)
over completion tokens up to and including the first EOS, divided by the number of such tokens in the
GLOBAL batch of the optimizer step.

The estimator is DETERMINISTIC: the same weights, completion and mask seed give the same log-probs in the
old-policy, reference and policy passes. So no dropout anywhere in RL (LoRA adapters carry none; d1 ran LoRA
dropout 0.05 independently in each pass and while sampling, so its ratio was not 1 even before any update:
noise that the clip then treated as policy change), and the old log-probs of inner step 0 ARE the policy's
(the weights have not moved yet): it reuses them (ratio exactly 1) instead of a second pass. The head and
log-softmax run in fp32 with autocast off (model.OutputHead): bf16 logits would round log-probs by more than
one update moves them.

Deliberate differences from the public d1 code (method.md, "Pitfalls"):
- mask seeds are stored with the rollout and indexed by inner step k (d1 indexed them after the step counter
  moved, so with grad accumulation each micro-batch saw only mu/2 distinct masks);
- masks come from local torch.Generators keyed on (mask seed, GLOBAL completion index); d1 reseeded the
  global RNGs inside the loss. Rollout noise is keyed the same way: N processes reproduce 1 process;
- Gumbel noise in float64, logits and log-softmax in fp32 and only at completion positions, in chunks (d1:
  bf16, full sequence, full vocabulary); no dropout (above);
- the loss is normalised by the completion tokens of the global batch, not per micro-batch (split-invariant);
- mu = 1 with beta > 0 works; beta = 0 skips the reference pass; padding is masked in attention (d1 attended
  to left padding); the reference policy is the LoRA-disabled network (no second copy), or a frozen copy
  with full fine-tuning;
- base weights in bf16 (d1: 4-bit NF4 through bitsandbytes, for policy and reference alike): LLaDA-8B in bf16
  fits an 80 GB GPU, and a 4-bit base would change the model being trained;
- rewards fixed as documented in rewards.py (safe Countdown evaluator, DOTALL regexes, negative GSM8K, ...);
- validation on a held-out split of the TRAINING data; the test set is never used for selection.
The learning rate follows d1's `constant_with_warmup` (warmup ratio 1e-4 = 1 step for every d1 task, with HF's
formula lr * step / warmup, so d1's first optimizer step had lr 0: AdamW's moments see one gradient first).

Full fine-tuning (--lora-r 0): fp32 master weights, gradients and AdamW state (~16 bytes/parameter, 128 GB at 8B)
plus, with beta > 0, a frozen bf16 copy as the KL reference (2 bytes/parameter; --beta 0 drops it and the
reference pass). Plain DDP replicates all of it on every GPU; --fsdp shards policy and reference over the ranks
(FSDP2, train_utils.shard_fsdp) and writes sharded checkpoints (torch.distributed.checkpoint; --export converts one to
an HF-layout model, --merge writes one at the end). --fsdp is explicit, never automatic; LoRA stays on DDP. The
sampler and the log-prob estimator run on the sharded model as they are (each sharded unit all-gathers itself
when called). Start-up prints the per-GPU memory budget (train_utils.memory_budget, computed) and refuses to start when
it exceeds the GPU's memory. Flags are checked before anything loads; a used --out-dir is refused unless
--resume auto (continue) or --overwrite (start over), see train_utils.claim_out_dir.

Commands:
  CPU smoke test:  python diffu_grpo.py --init tiny --task sudoku --train-path puzzles.csv --style compact \\
                       --gen-length 32 --block-length 16 --diffusion-steps 16 --max-steps 6 --mu 3
  the plan only:   python diffu_grpo.py --task gsm8k --dry-run 8
  1 GPU:           python diffu_grpo.py --task gsm8k --device cuda
  8 GPUs (d1):     torchrun --nproc_per_node=8 diffu_grpo.py --task gsm8k
  mixed tasks:     torchrun --nproc_per_node=8 diffu_grpo.py --task gsm8k,math,countdown,sudoku
  8 GPUs, full fine-tuning (sharded):
                   torchrun --standalone --nproc_per_node=8 diffu_grpo.py --task gsm8k --init out/sft-s1k-full/merged \\
                       --lora-r 0 --fsdp --grad-checkpointing --merge
  2 nodes x 8 GPUs (the same line on each node, NODE_RANK 0 and 1; --out-dir on a filesystem both nodes see):
                   torchrun --nnodes 2 --nproc_per_node 8 --node-rank $NODE_RANK --rdzv-backend c10d \\
                       --rdzv-endpoint $HOST:29500 diffu_grpo.py --task gsm8k --init out/sft-s1k-full/merged \\
                       --lora-r 0 --fsdp --grad-checkpointing --merge --out-dir /shared/out/grpo-full

Longer than ~650 lines, on purpose: the algorithm (estimator, loss, one round's named steps) reads top to bottom
in ~450 lines; the rest is the run plan and the flat argparse block, which stay here so that `--help`, the plan
and the code that uses each flag sit in one file. Plumbing shared with sft.py is in train_utils.py.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from cli import (ArgumentParser, HelpFormatter, bounded, check_lora_targets, check_model_arg, check_paths,
                 check_training_run, nonneg_float, nonneg_int, positive_float, positive_int, probability, run_cli)
from model import (LLaDA, adapter_base, apply_lora, example_generator, load_adapter, load_tokenizer, lora_disabled,
                   lora_modules, make_char_tokenizer, mask_tokens, merge_lora, preset_config, row_uniforms)
from train_utils import (MetricsLog, all_reduce_sums, check_init_merged, check_memory_budget, claim_out_dir,
                         close_distributed, export_sharded_checkpoint, init_distributed, memory_budget, merge_record,
                         resume_training, save_pretrained_fsdp, save_run_checkpoint, shard_fsdp)
import data
import eval as evaluation
import rewards
from sample import generate, left_pad

# d1's per-task defaults (launch scripts): inner iterations mu and total OPTIMIZER steps.
TASK_MU = {"gsm8k": 12, "math": 12, "countdown": 8, "sudoku": 8, "code": 12}
TASK_STEPS = {"gsm8k": 7700, "math": 6600, "countdown": 5000, "sudoku": 3800, "code": 5000}
# d1 left-truncated prompts to 200 tokens; coding prompts (instructions + problem + signature) need more.
TASK_PROMPT_LENGTH = {"code": 512}
D1_WARMUP_RATIO = 1e-4  # d1: lr_scheduler_type constant_with_warmup, warmup_ratio 1e-4 -> ceil(1e-4 * steps) = 1 step
# The flags that make up d1's recipe: the run plan lists those whose value differs from d1's (the parser defaults,
# with the per-task values above).
RECIPE = ("max_steps", "mu", "num_generations", "prompts_per_step", "gen_length", "block_length", "diffusion_steps",
          "temperature", "threshold", "cache", "cache_refresh", "max_prompt_length", "p_mask_prompt", "eps", "beta",
          "scale_rewards", "random_reward", "lr", "warmup_steps", "betas", "weight_decay", "max_grad_norm", "lora_r",
          "lora_alpha", "lora_targets")

# -----------------------------------------------------------------------------
# The estimator and the loss


def _token_logprobs(head, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """h (b, G, D), tokens (b, G) -> log p(token) (b, G): fp32 logits (autocast off) and fp32 log-softmax."""
    logits = head(h, fp32=True)  # (b, G, V) fp32
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        mask_gens: list[torch.Generator], p_mask_prompt: float, mask_id: int,
                        chunk_rows: int | None = None) -> torch.Tensor:
    """d1's one-step mean-field log-probs of the completion tokens.

    prompt_ids, prompt_mask (B, P) left-padded; completion_ids (B, G); mask_gens one generator per row.
    Real prompt tokens -> [MASK] with probability p_mask_prompt, every completion token -> [MASK], one forward
    pass, and log p(completion_ids[i, j]) read at completion position j. Returns (B, G) fp32.
    The output head runs in fp32 on `chunk_rows` rows at a time, so the (B, G, V) logits never exist at once: at
    126k vocabulary they would be the largest tensor of the step. Default: 2 rows under grad (checkpointed:
    recomputed in backward instead of stored), else as many rows as keep a chunk's fp32 logits under 1 GiB."""
    B, P = prompt_ids.shape
    if chunk_rows is None:
        V = unwrap(model).config.vocab_size
        chunk_rows = 2 if torch.is_grad_enabled() else max(1, 2**28 // (completion_ids.shape[1] * V))
    u = row_uniforms(mask_gens, prompt_mask)
    noisy_prompt, _ = mask_tokens(prompt_ids, prompt_mask.bool(), p_mask_prompt, u, mask_id)
    x = torch.cat([noisy_prompt, torch.full_like(completion_ids, mask_id)], dim=1)  # (B, P + G)
    # No mask when nothing is padded: SDPA then may use its flash kernel (it takes no mask)
    am = None if bool(prompt_mask.all()) else torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
    # Through the model's forward (DDP/FSDP hooks); its last block computes the completion positions only.
    h = model(x, am, positions=slice(P, None), return_hidden=True)  # (B, G, D)
    head = unwrap(model).head
    out = []
    for r in range(0, B, chunk_rows):
        hc, tc = h[r:r + chunk_rows], completion_ids[r:r + chunk_rows]
        if torch.is_grad_enabled():  # recompute the chunk's logits in backward instead of storing them
            out.append(checkpoint(_token_logprobs, head, hc, tc, use_reentrant=False))
        else:
            out.append(_token_logprobs(head, hc, tc))
    return torch.cat(out)


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, G) float: 1 for tokens up to and including the first EOS (all tokens if there is none)."""
    is_eos = completion_ids == eos_id
    before_or_at_first = (is_eos.cumsum(1) - is_eos.long()) == 0  # no EOS strictly before this position
    return before_or_at_first.float()


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False) -> torch.Tensor:
    """rewards (N,) in groups of `group_size` consecutive completions -> r - group mean (/ group std)."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.view(-1)


def grpo_loss(logp, old_logp, ref_logp, advantages, cmask, eps: float, beta: float, normalizer: float):
    """Clipped surrogate + beta * k3 KL, summed over completion tokens and divided by `normalizer` (the
    number of completion tokens of the global batch). logp/old/ref/cmask (B, G), advantages (B,).
    Returns (loss, stats dict of token sums for logging)."""
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a
    per_token = -torch.min(unclipped, clipped)
    stats = {"clip_frac": ((clipped < unclipped).float() * cmask).sum().item(), "ratio": (ratio * cmask).sum().item()}
    if beta > 0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
        stats["kl"] = (kl * cmask).sum().item()
    return (per_token * cmask).sum() / normalizer, stats


def lr_at(step: int, base_lr: float, warmup: int) -> float:
    """d1's schedule, HF's `constant_with_warmup`: lr * step / warmup for optimizer step `step` (0-based) < warmup
    (0 at the first step), then constant."""
    return base_lr * min(1.0, step / warmup) if warmup > 0 else base_lr


# -----------------------------------------------------------------------------
# One rollout round: prompts, completions, rewards, stored mask seeds


def unwrap(model):
    return model.module if isinstance(model, DDP) else model


@functools.lru_cache(maxsize=16)  # the current and next epoch of each task: a round may straddle them
def epoch_order(n: int, seed: int, epoch: int, task: int = 0) -> list[int]:
    """The order of a task's training prompts in an epoch: depends only on (seed, epoch, task)."""
    return torch.randperm(n, generator=example_generator(seed, 4, epoch, task)).tolist()


def round_prompts(sizes: list[int], rnd: int, per_round: int, seed: int) -> list[int]:
    """Indices, into the tasks' training sets concatenated in order, of the prompts of rollout round `rnd`.
    Prompt slots go to the tasks in turn, so each task gets an equal share however large its dataset is (the
    sizes differ by 100x between GSM8K and Sudoku); each task walks through its own shuffled epochs."""
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    out = []
    for pos in range(rnd * per_round, (rnd + 1) * per_round):
        t, k = pos % len(sizes), pos // len(sizes)
        epoch, i = divmod(k, sizes[t])
        out.append(offsets[t] + epoch_order(sizes[t], seed, epoch, t)[i])
    return out


@dataclasses.dataclass
class Round:
    """One rollout round as this rank holds it. N = this rank's completions (its prompts x G), L = gen length."""
    index: int                    # the round number: keys the prompts, the sampler noise and the mask seeds
    prompt_ids: torch.Tensor      # (N, P) left-padded
    prompt_mask: torch.Tensor     # (N, P) 1 = real token
    completion_ids: torch.Tensor  # (N, L)
    gidx: list[int]               # global completion index of each row: keys the sampler noise and the masks
    rewards: torch.Tensor         # (N,) the task rewards (logged even when --random-reward trains on noise)
    advantages: torch.Tensor      # (N,)
    cmask: torch.Tensor           # (N, L) 1 = completion token up to and including the first EOS
    normalizer: float             # completion tokens of the GLOBAL round (all ranks): the loss's denominator
    mask_seeds: list[int]         # mu seeds, one per inner step, drawn once and stored with the rollout


def rollout(model, prompt_ids, prompt_mask, gidx: list[int], rnd: int, args, autocast,
            stats: dict | None = None) -> torch.Tensor:
    """The completions (N, gen_length) of this rank's rows, sampled in batches of --gen-batch-size. The noise of
    row i is keyed on (seed, round, gidx[i]): a completion does not depend on its batch-mates or the rank.
    stats: the sampler's model calls and positions are added to it (sample.generate)."""
    model.eval()
    out = []
    for r in range(0, len(gidx), args.gen_batch_size):
        rows = slice(r, r + args.gen_batch_size)
        with autocast:
            x = generate(model, prompt_ids[rows], prompt_mask[rows], steps=args.diffusion_steps,
                         gen_length=args.gen_length, block_length=args.block_length, temperature=args.temperature,
                         generator=[example_generator(args.seed, 1, rnd, g) for g in gidx[rows]],
                         threshold=args.threshold, cache=args.cache, cache_refresh=args.cache_refresh,
                         stats=stats)  # (b, P + gen_length)
        out.append(x[:, prompt_ids.shape[1]:])
    return torch.cat(out)


def score(tasks: list[str], examples: list[dict], texts: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
    """Task rewards (N,) of this rank's completions and, for logging, sums "task/component" over them."""
    total = torch.zeros(len(texts))
    sums: dict[str, float] = {}
    for task in tasks:
        rows = [i for i, ex in enumerate(examples) if ex["task"] == task]
        sums[f"{task}/count"] = float(len(rows))
        if not rows:
            continue
        scores = rewards.score(task, [texts[i] for i in rows], [examples[i]["target"] for i in rows])
        total[rows] = torch.tensor(scores["total"], dtype=torch.float32)
        for name, vals in scores.items():
            sums[f"{task}/{name}"] = sum(vals)
    return total, sums


def estimate(model, rnd: Round, k: int, rows, args, mask_id: int) -> torch.Tensor:
    """Log-probs (len(rows), L) of rows of the round under `model`, with the prompt mask of inner step k."""
    gens = [example_generator(rnd.mask_seeds[k], rnd.gidx[i]) for i in rows]
    return completion_logprobs(model, rnd.prompt_ids[rows], rnd.prompt_mask[rows], rnd.completion_ids[rows], gens,
                               args.p_mask_prompt, mask_id)


def micro_batches(n: int, size: int) -> list[list[int]]:
    return [list(range(r, min(r + size, n))) for r in range(0, n, size)]


@torch.no_grad()
def old_and_ref_logprobs(model, ref_model, rnd: Round, mu: int, args, autocast, mask_id: int):
    """Old-policy log-probs for inner steps 1..mu-1 (step 0 reuses the policy's own: the weights have not moved
    yet) and reference log-probs for all mu steps, each (N, L), computed once per round. Lists indexed by k;
    None where not needed (old[0]; every ref when beta = 0). Without grad there are no activations to keep:
    each mask's pass runs on --logp-batch-size rows at once (default: all of this rank's), not per micro-batch."""
    model.eval()
    chunks = micro_batches(len(rnd.gidx), args.logp_batch_size or len(rnd.gidx))
    pass_ = lambda m, k: torch.cat([estimate(m, rnd, k, rows, args, mask_id) for rows in chunks])  # noqa: E731
    with autocast:
        old = [None] + [pass_(model, k) for k in range(1, mu)]
        ref = [None] * mu
        if args.beta > 0:  # the frozen reference: the same network with LoRA off, or a frozen copy (full FT)
            with (lora_disabled(model) if ref_model is None else contextlib.nullcontext()):
                ref = [pass_(model if ref_model is None else ref_model, k) for k in range(mu)]
    return old, ref


def update(policy, optimizer, params, rnd: Round, k: int, old, ref, args, autocast, mask_id: int, lr: float,
           ddp: bool, world: int) -> dict[str, float]:
    """Inner step k: one optimizer step over all of the round's completions (grad accumulation over this rank's
    micro-batches; DDP/FSDP reduce on the last). Returns token sums of the loss statistics and the grad norm."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    policy.train()  # only gradient checkpointing looks at it: RL has no dropout
    mbs = micro_batches(len(rnd.gidx), args.micro_batch_size)
    sums = {"loss": 0.0, "clip_frac": 0.0, "ratio": 0.0, "kl": 0.0}
    for j, rows in enumerate(mbs):
        last = j == len(mbs) - 1
        if args.fsdp:  # FSDP's no_sync: keep unsharded gradients until the last micro-step, then reduce-scatter
            policy.set_requires_gradient_sync(last)
        sync = contextlib.nullcontext() if (last or not ddp or args.fsdp) else policy.no_sync()
        with sync:
            with autocast:
                logp = estimate(policy, rnd, k, rows, args, mask_id)  # (b, L)
            old_k = logp.detach() if old[k] is None else old[k][rows]
            ref_k = None if ref[k] is None else ref[k][rows]
            loss, st = grpo_loss(logp, old_k, ref_k, rnd.advantages[rows], rnd.cmask[rows], args.eps, args.beta,
                                 rnd.normalizer)
            (loss * world).backward()  # DDP averages gradients over ranks; we want the global sum
        sums["loss"] += loss.item()
        for key, v in st.items():
            sums[key] += v
    grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm if args.max_grad_norm > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**sums, "grad_norm": float(grad_norm)}


def round_log(totals: dict[str, float], G: int, gen_length: int, t_gen: float, t_logp: float,
              t_gen_cpu: float) -> dict:
    """Round statistics (logged on the round's first optimizer step) from globally summed numbers. gen_calls,
    gen_positions: the round's sampler model calls and the rows x sequence positions they ran, all ranks together
    (the rollout's cost in forwards: the cache and threshold modes lower one or both). t_gen_cpu: this process's
    CPU seconds in the rollout (all its threads), steadier than the wall-clock t_gen on shared cores."""
    n = totals["n"]
    mean = totals["reward"] / n
    log = {"reward": mean, "reward_std": math.sqrt(max(totals["reward_sq"] / n - mean ** 2, 0.0)),
           "zero_std_groups": totals["zero_std_groups"] / (n / G), "completion_len": totals["tokens"] / n,
           "t_gen": t_gen, "t_gen_cpu": t_gen_cpu, "t_logp": t_logp, "gen_tok_s": n * gen_length / max(t_gen, 1e-9),
           "gen_calls": totals["gen_calls"], "gen_positions": totals["gen_positions"]}
    for key, v in totals.items():  # "task/component" sums -> per-completion means of that task
        if "/" in key and not key.endswith("/count"):
            log[f"reward/{key}"] = v / max(1.0, totals[key.split("/")[0] + "/count"])
    return log


def build_model(args, device, dtype, master: bool):
    """The policy (with LoRA unless --lora-r 0), its tokenizer, the name of the base model its adapters apply to,
    and for full fine-tuning with beta > 0 a frozen copy as the KL reference. With --fsdp both are sharded."""
    lora = args.lora_r > 0
    # LoRA: frozen base weights straight in the compute dtype on the device; full fine-tuning: fp32 master weights.
    load_dtype, load_device = (dtype, device) if lora and not args.fsdp else (torch.float32, "cpu")
    base_name = None if args.init == "tiny" else args.init  # None: a random base, saved with each adapter
    if args.init == "tiny":  # random tiny model: smoke tests of the code path
        tokenizer = make_char_tokenizer()
        model = LLaDA(preset_config("tiny", tokenizer)).init_weights(args.seed).to(load_device, load_dtype)
    elif (Path(args.init) / "adapter_config.json").is_file():  # an SFT adapter: merged into its base model
        init = Path(args.init)
        base = adapter_base(init, args.base_model)
        # Our adapters need a real base folder: the merged starting point, OUT/init-merged, written once per run
        # (a resumed run checks, before loading anything, that it was merged from this --init).
        merged, record = Path(args.out_dir) / "init-merged", merge_record(init, base) if lora else None
        reuse = lora and master and check_init_merged(merged, record)
        tokenizer = load_tokenizer(init if (init / "tokenizer.json").is_file() else base)
        model = merge_lora(load_adapter(LLaDA.from_pretrained(base, dtype=load_dtype, device=load_device), init))
        if lora:
            base_name = str(merged)
            if master and not reuse:
                model.save_pretrained(merged, tokenizer=tokenizer)
                (merged / "merged_from.json").write_text(json.dumps(record, indent=2) + "\n")
    else:
        tokenizer = load_tokenizer(args.init)
        model = LLaDA.from_pretrained(args.init, dtype=load_dtype, device=load_device)
    ref = None
    if lora:  # the reference policy is this network with the adapters disabled (lora_disabled); no dropout in RL
        model = apply_lora(model, args.lora_r, args.lora_alpha, 0.0, args.lora_targets.split(","), seed=args.seed)
    else:
        if args.beta > 0:  # built on the meta device, then given copies of the weights: no random init
            # The reference computes exactly as the policy does: bf16 weights under FSDP's mixed precision,
            # else the policy's own (fp32) weights under autocast. Then KL is 0 until the policy moves.
            ref_dtype = dtype if args.fsdp else model.transformer.wte.weight.dtype
            with torch.device("meta"):
                ref = LLaDA(model.config)
            ref.load_state_dict({k: v.to(ref_dtype, copy=True) for k, v in model.state_dict().items()}, assign=True)
            ref.requires_grad_(False).eval()
        if args.fsdp:  # each rank keeps (and moves to its GPU) 1/world of the weights
            shard_fsdp(model, device, mp_dtype=dtype if device.startswith("cuda") and dtype != torch.float32 else None)
            if ref is not None:
                shard_fsdp(ref, device)  # already in the compute dtype; no_grad only, never a gradient
        else:
            model = model.to(device)
            ref = ref.to(device) if ref is not None else None
    model.gradient_checkpointing = args.grad_checkpointing
    return model, tokenizer, base_name, ref


# -----------------------------------------------------------------------------
# The run plan: what a launch will do, printed before anything loads (--dry-run: only that)


def resolve_defaults(args) -> None:
    """Fill the per-task defaults (d1's mu, optimizer steps, prompt length) and d1's warmup into `args`."""
    tasks = args.task.split(",")
    args.mu = args.mu if args.mu is not None else max(TASK_MU.get(t, 8) for t in tasks)
    args.max_steps = args.max_steps if args.max_steps is not None else max(TASK_STEPS.get(t, 1000) for t in tasks)
    if args.max_prompt_length is None:
        args.max_prompt_length = max(TASK_PROMPT_LENGTH.get(t, 200) for t in tasks)
    if args.warmup_steps is None:
        args.warmup_steps = math.ceil(D1_WARMUP_RATIO * args.max_steps)


def known_train_size(args) -> int | None:
    """Training prompts known without downloading: GSM8K's train split has 7,473 rows (openai/gsm8k, main), of
    which data.py holds out 256 for validation. Other hub sources are counted when the run loads them."""
    if args.task == "gsm8k" and args.train_path is None:
        return 7473 - data.HOLDOUT["gsm8k"]
    return None


def run_plan(args, world: int, n_train: int | None = None) -> str:
    """What the run will do, in numbers a user can plan a GPU budget with, and where it departs from d1."""
    G, per_round, mu, S = args.num_generations, args.prompts_per_step, args.mu, args.max_steps
    local = per_round // world * G
    rounds = math.ceil(S / mu)
    last = S - (rounds - 1) * mu
    prompts = rounds * per_round
    gen_calls = math.ceil(local / args.gen_batch_size)
    epochs = f" = {prompts / n_train:.2f} epochs of {n_train:,} training prompts" if n_train else \
        " (epochs: the training set is counted when it loads)"
    lines = [
        f"diffu-GRPO run plan: task {args.task}, {world} process{'es' if world > 1 else ''}",
        f"  round             {per_round} prompts x G={G} = {per_round * G} completions ({local} per process)",
        f"  optimizer steps   {S:,}, mu={mu} per round, each over all {per_round * G} completions of its round "
        f"(micro-batch {args.micro_batch_size}, grad accum {math.ceil(local / args.micro_batch_size)} per process)",
        f"  rollout rounds    {rounds:,}" + (f" (the last runs {last} of its {mu} steps)" if last < mu else ""),
        f"  prompts           {prompts:,}{epochs}",
        f"  sampler forwards  {gen_calls * args.diffusion_steps:,} per round per process ({gen_calls} batch"
        f"{'es' if gen_calls > 1 else ''} x {args.diffusion_steps} steps, {args.gen_length} tokens, block "
        f"{args.block_length})",
        f"  log-prob passes   per round over the {local} completions of each process: old policy {mu - 1}, "
        f"reference {mu if args.beta > 0 else 0} (no grad), policy {mu} (forward + backward)",
        f"  tokens generated  {rounds * per_round * G * args.gen_length:,} in total",
        f"  learning rate     {args.lr:g}, constant after {args.warmup_steps} warmup step(s) (lr * step / warmup)",
    ]
    d1 = build_parser().parse_args(["--task", args.task])
    resolve_defaults(d1)
    diffs = [f"--{k.replace('_', '-')} {getattr(args, k)} (d1: {getattr(d1, k)})" for k in RECIPE
             if getattr(args, k) != getattr(d1, k)]
    lines.append(f"  vs d1's recipe    {'; '.join(diffs) if diffs else 'the same'}; always: bf16 base weights (d1: "
                 "4-bit NF4), padding masked, no dropout, d1's bugs fixed (README)")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="diffu-GRPO reinforcement learning for LLaDA (d1 stage 2). A step is one "
                                   "optimizer step; a rollout round feeds mu of them.",
                       formatter_class=HelpFormatter)
    # model
    p.add_argument("--init", default="GSAI-ML/LLaDA-8B-Instruct",
                   help="starting model: hub id / folder (base or merged SFT), an SFT adapter folder, or 'tiny'")
    p.add_argument("--base-model", default=None, help="base model of an --init adapter (default: from its config)")
    p.add_argument("--lora-r", type=nonneg_int, default=128, help="LoRA rank; 0 = full fine-tuning")
    p.add_argument("--lora-alpha", type=positive_float, default=64, help="LoRA alpha (scale alpha / r)")
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,up_proj",
                   help="block modules to adapt (d1's q/k/v/o/gate/up/down list matches these four in LLaDA)")
    # data
    p.add_argument("--task", default="gsm8k",
                   help="task or comma-separated mix: gsm8k, math, countdown, sudoku (d1's four) and code (KodCode)")
    p.add_argument("--train-path", default=None,
                   help="local training data, one comma-separated path per task (default: download d1's source, "
                        "data.SOURCES): JSONL, JSON, CSV or Parquet; .jsonl.gz/.json.gz/.csv.gz; or a datasets "
                        "save_to_disk folder")
    p.add_argument("--countdown-test-path", default=None,
                   help="a local copy of d1's Countdown test file (countdown_cd3_test.jsonl), whose items are removed "
                        "from Countdown training (default: download it once)")
    p.add_argument("--style", default="rl", choices=["rl", "compact"], help="prompt style (compact: tiny models)")
    p.add_argument("--max-prompt-length", type=positive_int, default=None,
                   help="prompts are left-truncated to this many tokens (default: 200 as d1; 512 with code)")
    # rollouts
    p.add_argument("--num-generations", type=bounded(int, 2), default=6,
                   help="G: completions per prompt (advantages compare them: at least 2)")
    p.add_argument("--prompts-per-step", type=positive_int, default=16,
                   help="prompts per rollout round, all ranks together; every optimizer step of the round uses all "
                        "of their completions")
    p.add_argument("--gen-length", type=positive_int, default=256, help="completion length in tokens")
    p.add_argument("--block-length", type=positive_int, default=32,
                   help="semi-autoregressive block length of the rollout sampler (divides --gen-length)")
    p.add_argument("--diffusion-steps", type=positive_int, default=128,
                   help="denoising steps per completion (a multiple of the number of blocks)")
    p.add_argument("--temperature", type=nonneg_float, default=0.9, help="rollout sampling temperature (0 = greedy)")
    p.add_argument("--gen-batch-size", type=positive_int, default=48, help="completions per sampler call")
    p.add_argument("--threshold", type=probability, default=None,
                   help="opt-in fast parallel decoding for rollouts: commit every token above this confidence")
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual"],
                   help="opt-in approximate KV cache for rollouts (Fast-dLLM); changes the samples")
    p.add_argument("--cache-refresh", type=positive_int, default=None,
                   help="with --cache: refill the rollout cache every N sampler calls of a block (default: once per "
                        "block; 1 = the exact sampler's rollouts)")
    # objective
    p.add_argument("--mu", type=positive_int, default=None,
                   help="inner iterations = optimizer steps per rollout round (default: d1's per task, 12 or 8)")
    p.add_argument("--p-mask-prompt", type=probability, default=0.15,
                   help="probability that the estimator masks each prompt token")
    p.add_argument("--eps", type=nonneg_float, default=0.5, help="clipping epsilon")
    p.add_argument("--beta", type=nonneg_float, default=0.04, help="KL coefficient (0 skips the reference pass)")
    p.add_argument("--scale-rewards", action="store_true", help="divide advantages by the group std (d1: no)")
    p.add_argument("--random-reward", action="store_true", help="control run: train on U(0,1) noise as reward")
    # optimisation
    p.add_argument("--lr", type=nonneg_float, default=3e-6, help="AdamW learning rate (0: the policy never moves)")
    p.add_argument("--warmup-steps", type=nonneg_int, default=None,
                   help="linear warmup in optimizer steps, HF's formula (lr * step / warmup: 0 at the first step), "
                        "then constant (default: d1's warmup ratio 1e-4 of --max-steps, i.e. 1 step)")
    p.add_argument("--betas", default="0.9,0.99", help="AdamW beta1,beta2")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.1, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=nonneg_float, default=0.2,
                   help="clip the global gradient norm to this; 0 = no clipping")
    p.add_argument("--micro-batch-size", type=positive_int, default=6,
                   help="completions per forward/backward (divides each rank's completions of a round)")
    p.add_argument("--logp-batch-size", type=positive_int, default=None,
                   help="completions per no-grad forward of the old-policy/reference passes (default: all of a "
                        "rank's; lower it if those passes run out of memory)")
    p.add_argument("--max-steps", type=nonneg_int, default=None,
                   help="OPTIMIZER steps in total (default: d1's per task: gsm8k 7700, math 6600, countdown 5000, "
                        "sudoku 3800); the last round stops early when this is not a multiple of mu")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--fsdp", action="store_true",
                   help="full fine-tuning (--lora-r 0) under torchrun: shard weights, gradients, AdamW state and the "
                        "KL reference over the ranks (FSDP2); checkpoints are sharded (torch.distributed.checkpoint)")
    # bookkeeping
    p.add_argument("--out-dir", default="out/grpo", help="checkpoints, metrics.jsonl, args.json, merged model")
    p.add_argument("--eval-every", type=nonneg_int, default=100,
                   help="validation accuracy at the end of the first round reaching each multiple of N optimizer "
                        "steps, and at the end (0 = never)")
    p.add_argument("--val-size", type=nonneg_int, default=64, help="validation prompts (held out from TRAINING data)")
    p.add_argument("--save-every", type=nonneg_int, default=500,
                   help="checkpoint at the end of the first round reaching each multiple of N optimizer steps, "
                        "named by the step reached, and at the end (0: only at the end)")
    p.add_argument("--keep-last", type=nonneg_int, default=0, help="keep only the last N checkpoints (0 = all)")
    p.add_argument("--resume", default=None, help="checkpoint folder, or 'auto' for the newest in --out-dir")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out-dir (checkpoints, metrics, init-merged) and start over; "
                        "without it (or --resume) a non-empty --out-dir is refused")
    p.add_argument("--merge", action="store_true",
                   help="at the end write out_dir/merged: a full HF-layout model (LoRA merged; --fsdp: gathered)")
    p.add_argument("--export", default=None, metavar="CKPT",
                   help="convert the sharded checkpoint folder CKPT to an HF-layout model in CKPT-hf (one process, "
                        "CPU, in --dtype) and exit")
    p.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log the metrics to this Weights & Biases project (needs `pip install wandb`)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write the metrics as TensorBoard events to DIR (needs `pip install tensorboard`)")
    # (const 0 = "this launch's world size"; an explicit 0 is refused by the type)
    p.add_argument("--dry-run", type=positive_int, nargs="?", const=0, default=None, metavar="WORLD",
                   help="print the run plan for WORLD processes (no WORLD: this launch's) and exit, loading nothing")
    p.add_argument("--seed", type=int, default=42, help="prompt order, rollout noise, estimator masks, LoRA init")
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype (auto: bfloat16 on a GPU, else float32)")
    return p


def parse_args(argv=None):
    """The flags, checked before anything loads: one parser error (exit status 2) names the flag, value and rule.
    The per-task defaults (mu, --max-steps, ...) are filled in by resolve_defaults."""
    p = build_parser()
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.task.split(",")]
    args.task = ",".join(tasks)
    unknown = [t for t in tasks if t not in TASK_MU]
    if unknown or len(set(tasks)) < len(tasks):
        p.error(f"--task {args.task}: {'unknown ' + ', '.join(unknown) if unknown else 'a task twice'}; choose from "
                f"{', '.join(TASK_MU)}")
    if args.train_path is not None:
        if len(args.train_path.split(",")) != len(tasks):
            p.error(f"--train-path {args.train_path}: one path per --task ({len(tasks)}), comma-separated")
        check_paths(p, "--train-path", args.train_path)
    if args.countdown_test_path is not None:
        if "countdown" not in tasks:
            p.error(f"--countdown-test-path {args.countdown_test_path}: used only with --task countdown")
        check_paths(p, "--countdown-test-path", args.countdown_test_path)
    if args.init != "tiny":
        check_model_arg(p, "--init", args.init)
    check_model_arg(p, "--base-model", args.base_model)
    if args.lora_r > 0:
        check_lora_targets(p, "--lora-targets", args.lora_targets)
    try:
        betas = [float(b) for b in args.betas.split(",")]
    except ValueError:
        betas = []
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        p.error(f"--betas {args.betas}: expected two numbers in [0, 1), e.g. 0.9,0.99")
    if args.gen_length % args.block_length:
        p.error(f"--gen-length {args.gen_length}: must be a multiple of --block-length {args.block_length}")
    blocks = args.gen_length // args.block_length
    if args.diffusion_steps % blocks:
        p.error(f"--diffusion-steps {args.diffusion_steps}: must be a multiple of the {blocks} blocks "
                f"(--gen-length {args.gen_length} / --block-length {args.block_length})")
    if args.cache_refresh is not None and args.cache == "none":
        p.error(f"--cache-refresh {args.cache_refresh}: refreshes the rollout cache, pass --cache prefix or dual "
                "with it")
    if args.fsdp and (args.lora_r > 0 or ("RANK" not in os.environ and args.dry_run is None)):
        p.error("--fsdp shards full fine-tuning: use it with --lora-r 0, under torchrun (LoRA runs on DDP)")
    if args.fsdp and args.threshold is not None:
        p.error("--threshold makes the number of sampler forwards differ between ranks, which FSDP's collective "
                "all-gathers cannot follow: leave it unset with --fsdp")
    world = args.dry_run or int(os.environ.get("WORLD_SIZE", 1))  # torchrun sets WORLD_SIZE before we start
    if args.prompts_per_step % world:
        p.error(f"--prompts-per-step {args.prompts_per_step}: must be divisible by the {world} processes (each rank "
                "owns whole prompt groups)")
    local = args.prompts_per_step // world * args.num_generations
    if local % args.micro_batch_size:
        p.error(f"--micro-batch-size {args.micro_batch_size}: must divide the {local} completions per process "
                f"({args.prompts_per_step} prompts x G={args.num_generations} over {world} process(es))")
    check_training_run(p, args, "the policy never moves")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.export:
        out = export_sharded_checkpoint(args.export, args.export.rstrip("/") + "-hf", getattr(torch, args.dtype))
        print(f"wrote {out}")
        return
    resolve_defaults(args)
    if args.dry_run is not None:
        print(run_plan(args, args.dry_run or int(os.environ.get("WORLD_SIZE", 1)), known_train_size(args)))
        return
    # Rank 0 claims --out-dir before anything loads (torchrun sets RANK before the process group exists).
    claim = claim_out_dir(args.out_dir, resume=args.resume is not None, overwrite=args.overwrite)
    with claim if int(os.environ.get("RANK", 0)) == 0 else contextlib.nullcontext():
        run(args)


def run(args):
    """The run itself, once main has checked the flags, filled the per-task defaults and claimed --out-dir."""
    ddp, rank, world, device = init_distributed(args.device)
    master = rank == 0
    dtype = getattr(torch, args.dtype)
    autocast = torch.autocast("cuda", dtype=dtype) if device.startswith("cuda") else contextlib.nullcontext()
    if device.startswith("cuda") and dtype == torch.bfloat16:
        # fp32 matmuls of a bf16 run are the estimator's output head (model.OutputHead) on bf16-valued inputs,
        # which TF32's 10-bit mantissa holds exactly: tensor-core speed, fp32 accumulation and output.
        torch.backends.cuda.matmul.allow_tf32 = True
    if master:
        print(run_plan(args, world, known_train_size(args)), flush=True)
    model, tokenizer, base_name, ref_model = build_model(args, device, dtype, master)
    check_budget(args, model, ref_model, world, device, dtype, master)
    train, sizes, val = load_prompts(args, world, master)
    params = [p for p in model.parameters() if p.requires_grad]
    if master:
        print(f"{sum(p.numel() for p in params):,} trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=tuple(map(float, args.betas.split(","))),
                                  weight_decay=args.weight_decay)
    out_dir = Path(args.out_dir)
    step, rounds_done = resume(args, out_dir, model, optimizer, master)  # optimizer steps taken, rounds finished
    # FSDP's hooks live on the model itself; DDP wraps it.
    policy = DDP(model, device_ids=[device] if device.startswith("cuda") else None) if ddp and not args.fsdp else model
    raw = unwrap(policy)
    if master:
        (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2))
    metrics = MetricsLog(out_dir / "metrics.jsonl", step, args.wandb, args.tensorboard, vars(args)) if master else None
    bar = tqdm(total=args.max_steps, initial=step, disable=not master, desc="diffu-GRPO optimizer steps")
    mask_id, eos_id = model.config.mask_token_id, model.config.eos_token_id

    # Nothing below draws from the global RNG (every draw is keyed; RL has no dropout): resuming is exact.
    while step < args.max_steps:
        first_step, r = step, rounds_done
        # 1. rollout: G completions for each of this rank's prompts of round r
        t0, c0 = time.time(), time.process_time()
        examples, gidx, prompt_ids, prompt_mask = round_batch(train, sizes, r, tokenizer, eos_id, args, rank, world,
                                                              device)
        gen_stats = {"calls": 0, "positions": 0}  # the sampler's model calls and the rows x positions they ran
        completion_ids = rollout(raw, prompt_ids, prompt_mask, gidx, r, args, autocast, gen_stats)  # (N, gen_length)
        t_gen, t_gen_cpu = time.time() - t0, time.process_time() - c0
        # 2. rewards, advantages and the round's mu mask seeds
        rnd, comp_sums = score_round(r, examples, gidx, prompt_ids, prompt_mask, completion_ids, tokenizer, eos_id,
                                     args, device, ddp)
        # 3. old-policy and reference log-probs for the round's masks, no grad
        t0 = time.time()
        old, ref = old_and_ref_logprobs(raw, ref_model, rnd, args.mu, args, autocast, mask_id)
        t_logp = time.time() - t0
        # 4. up to mu optimizer steps over the round
        lines = []
        for k in range(min(args.mu, args.max_steps - step)):
            t0, lr = time.time(), lr_at(step, args.lr, args.warmup_steps)
            st = update(policy, optimizer, params, rnd, k, old, ref, args, autocast, mask_id, lr, ddp, world)
            step += 1
            lines.append({"step": step, "round": r + 1, "inner": k, "lr": lr, **st, "t_step": time.time() - t0})
            bar.update(1)
        rounds_done += 1
        lines = log_lines(lines, rnd, comp_sums, gen_stats, args, t_gen, t_gen_cpu, t_logp, device, ddp, world)
        done = step == args.max_steps
        crossed = lambda every: every > 0 and step // every > first_step // every  # noqa: E731
        if args.eval_every and (crossed(args.eval_every) or done):
            lines[-1].update(validate(raw, tokenizer, val, args, rank, world, autocast))
        if master:
            for line in lines:
                metrics.write(line)
            bar.write(progress_line(lines))
        if crossed(args.save_every) or done:
            state = {"args": vars(args), **lines[-1], "round": rounds_done}  # round: rounds finished
            save_run_checkpoint(out_dir, step, raw, optimizer, state, tokenizer, base_model=base_name,
                                fsdp=args.fsdp, master=master, keep_last=args.keep_last)
        if ddp:
            dist.barrier()
    bar.close()
    if master:
        metrics.close()
    finish(args, model, tokenizer, out_dir, dtype, master)
    if ddp:
        close_distributed()


def check_budget(args, model, ref_model, world: int, device: str, dtype: torch.dtype, master: bool) -> None:
    """Print the per-GPU memory budget (train_utils.memory_budget, computed); every rank raises when it cannot fit."""
    accum = args.prompts_per_step // world * args.num_generations // args.micro_batch_size
    budget = memory_budget(model.config, world, args.lora_r, fsdp=args.fsdp, reference=ref_model is not None,
                           lora_targets=args.lora_targets.split(","), compute_bytes=dtype.itemsize,
                           micro_batch=args.micro_batch_size, seq_len=args.max_prompt_length + args.gen_length,
                           logit_rows=2 * args.gen_length, grad_checkpointing=args.grad_checkpointing,
                           grad_accum=accum)  # logits: completion_logprobs' 2-row chunks
    line = check_memory_budget(budget, device)
    if master:
        print(line)
        if ref_model is not None:
            print(f"KL reference: a frozen {args.dtype} copy of the weights, {budget['reference'] / 2**30:.2f} GiB "
                  f"per GPU ({'sharded' if args.fsdp else 'replicated'}); --beta 0 drops it and its forward passes")


def load_prompts(args, world: int, master: bool) -> tuple[list[dict], list[int], list[dict]]:
    """The training prompts grouped by task in --task order, each task's count, and the validation prompts."""
    tasks = args.task.split(",")
    train = data.load_tasks(args.task, "train", path=args.train_path, style=args.style,
                            test_path=args.countdown_test_path)
    val = data.load_tasks(args.task, "val", path=args.train_path, style=args.style, limit=args.val_size,
                          test_path=args.countdown_test_path)
    train = [ex for task in tasks for ex in train if ex["task"] == task]
    sizes = [sum(ex["task"] == task for ex in train) for task in tasks]
    if min(sizes) == 0:
        raise ValueError(f"no training prompts for task {tasks[sizes.index(0)]!r} (train path: {args.train_path})")
    if master:
        n_prompts = math.ceil(args.max_steps / args.mu) * args.prompts_per_step
        print(f"{len(train)} training / {len(val)} validation prompts: the run's {n_prompts:,} prompts are "
              f"{n_prompts / len(train):.2f} epochs")
    if args.eval_every and not val:
        if master:
            print(f"warning: no validation prompts for --task {args.task}: periodic validation is off")
        args.eval_every = 0
    if args.fsdp and args.eval_every and len(val) % world:
        raise ValueError(f"--fsdp: the {len(val)} validation prompts must split evenly over {world} ranks (every rank "
                         "must run as many sampler forwards: FSDP's all-gathers are collective); change --val-size")
    return train, sizes, val


def resume(args, out_dir: Path, model, optimizer, master: bool) -> tuple[int, int]:
    """--resume: restore the weights and AdamW state; returns (optimizer steps taken, rollout rounds finished)."""
    ckpt, state = resume_training(args.resume, out_dir, model, optimizer, args.fsdp)
    if state is None:
        return 0, 0
    step, rounds_done = state["step"], state["round"]
    for key in ("seed", "task", "prompts_per_step", "num_generations", "train_path", "mu"):  # the data, the rounds
        if state["args"][key] != getattr(args, key):
            raise ValueError(f"--resume {ckpt}: --{key.replace('_', '-')} was {state['args'][key]!r}, now "
                             f"{getattr(args, key)!r}; the run would skip or repeat prompts")
    if master:
        print(f"resumed from {ckpt} at optimizer step {step}, round {rounds_done}")
        if step != rounds_done * args.mu:
            print(f"warning: {ckpt} ended inside its last round (--max-steps {state['args']['max_steps']} is not a "
                  f"multiple of mu = {args.mu}); this run starts a new round, so it differs from one launched with "
                  f"--max-steps {args.max_steps} from the start", file=sys.stderr)
    return step, rounds_done


def round_batch(train, sizes, r: int, tokenizer, eos_id: int, args, rank: int, world: int, device):
    """This rank's share of round r: its whole prompt groups, each prompt repeated G times. Returns the examples,
    the global completion index of each row, and the left-padded prompt ids and mask (N, P), left-truncated to
    --max-prompt-length tokens."""
    G, per_rank = args.num_generations, args.prompts_per_step // world
    idx = round_prompts(sizes, r, args.prompts_per_step, args.seed)[rank * per_rank:(rank + 1) * per_rank]
    examples = [train[i] for i in idx for _ in range(G)]
    gidx = [(rank * per_rank + j // G) * G + j % G for j in range(per_rank * G)]
    ids = [tokenizer(data.format_prompt(tokenizer, ex["prompt"]), add_special_tokens=False)["input_ids"]
           [-args.max_prompt_length:] for ex in examples]
    prompt_ids, prompt_mask = left_pad(ids, eos_id, device)
    return examples, gidx, prompt_ids, prompt_mask


def score_round(r: int, examples, gidx, prompt_ids, prompt_mask, completion_ids, tokenizer, eos_id: int, args,
                device, ddp: bool) -> tuple[Round, dict[str, float]]:
    """Reward this rank's completions (each rank scores its own groups), turn them into group advantages, count
    the completion tokens of the GLOBAL round and draw the round's mu mask seeds. Returns the Round and the
    rewards' per-component sums for logging."""
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    task_rewards, comp_sums = score(args.task.split(","), examples, texts)
    trained_on = task_rewards
    if args.random_reward:  # control: the same run, trained on noise
        trained_on = torch.stack([torch.rand((), generator=example_generator(args.seed, 3, r, g)) for g in gidx])
    cmask = completion_mask(completion_ids, eos_id)
    n_tokens = cmask.sum()
    if ddp:
        dist.all_reduce(n_tokens)
    mask_seeds = torch.randint(0, 2**62, (args.mu,), generator=example_generator(args.seed, 2, r)).tolist()
    advantages = group_advantages(trained_on, args.num_generations, args.scale_rewards).to(device)
    return Round(r, prompt_ids, prompt_mask, completion_ids, gidx, task_rewards, advantages, cmask, n_tokens.item(),
                 mask_seeds), comp_sums


def log_lines(lines: list[dict], rnd: Round, comp_sums: dict, gen_stats: dict, args, t_gen: float, t_gen_cpu: float,
              t_logp: float, device, ddp: bool, world: int) -> list[dict]:
    """The round's metrics lines, one per optimizer step: the loss statistics summed over ranks and divided by the
    global token count; the round statistics (rewards, lengths, the sampler's calls and positions, times) on the
    round's first step."""
    G = args.num_generations
    groups = rnd.rewards.view(-1, G)
    sums = {"reward": float(rnd.rewards.sum()), "reward_sq": float((rnd.rewards ** 2).sum()),
            "n": float(len(rnd.gidx)), "tokens": float(rnd.cmask.sum()), **comp_sums,
            "gen_calls": float(gen_stats["calls"]), "gen_positions": float(gen_stats["positions"]),
            "zero_std_groups": float((groups.std(1) == 0).sum()) if G > 1 else float(len(groups))}
    for i, line in enumerate(lines):  # per-step token sums of the loss statistics
        sums.update({f"{i}/{key}": line[key] for key in ("loss", "clip_frac", "ratio", "kl")})
    totals = all_reduce_sums(sums, device, ddp, world)
    for i, line in enumerate(lines):
        line.update(loss=totals[f"{i}/loss"], clip_frac=totals[f"{i}/clip_frac"] / rnd.normalizer,
                    ratio=totals[f"{i}/ratio"] / rnd.normalizer, kl=totals[f"{i}/kl"] / rnd.normalizer)
    lines[0].update(round_log({k: v for k, v in totals.items() if not k[0].isdigit()}, G, args.gen_length, t_gen,
                              t_logp, t_gen_cpu))
    return lines


def progress_line(lines: list[dict]) -> str:
    """One printed line per round."""
    first, last = lines[0], lines[-1]
    return (f"step {last['step']:5d} round {first['round']:4d} | reward {first['reward']:.3f} ± "
            f"{first['reward_std']:.3f} | zero-std {first['zero_std_groups']:.2f} | kl {last['kl']:.4f} | clip "
            f"{max(x['clip_frac'] for x in lines):.3f} | len {first['completion_len']:.0f} | gen {first['t_gen']:.1f}s "
            f"logp {first['t_logp']:.1f}s train {sum(x['t_step'] for x in lines):.1f}s"
            + (f" | val {last['val_accuracy']:.3f}" if "val_accuracy" in last else ""))


def finish(args, model, tokenizer, out_dir: Path, dtype: torch.dtype, master: bool) -> None:
    """--merge: OUT/merged, a full HF-layout model (LoRA merged in; with FSDP gathered to rank 0)."""
    if args.merge and args.fsdp:  # every rank takes part
        save_pretrained_fsdp(model, out_dir / "merged", tokenizer, dtype)
    elif args.merge and master:
        merged = merge_lora(model) if lora_modules(model) else model
        merged.to(dtype).save_pretrained(out_dir / "merged", tokenizer=tokenizer)
    if args.merge and master:
        print(f"wrote {out_dir / 'merged'}")


def validate(model, tokenizer, examples, args, rank, world, autocast) -> dict:
    """Greedy accuracy on the validation split with eval.py's protocol (all ranks share the work)."""
    with autocast:
        records = evaluation.evaluate(model, tokenizer, examples, gen_length=args.gen_length,
                                      block_length=args.block_length, steps=args.diffusion_steps, temperature=0.0,
                                      batch_size=args.gen_batch_size, prefill="", seed=args.seed, rank=rank,
                                      world=world, progress=False)
    summary = evaluation.summarize(records)  # {task: {gen_length: {"accuracy": ...}}}
    per_task = {task: by_len[args.gen_length]["accuracy"] for task, by_len in summary.items()}
    return {"val_accuracy": sum(per_task.values()) / len(per_task), **{f"val/{t}": a for t, a in per_task.items()}}


if __name__ == "__main__":
    run_cli(main)
