"""Benchmarks: the sampler (reference vs exact vs fast modes), one diffu-GRPO rollout round, SFT throughput.
One command per measurement; each prints a markdown table.

  python bench.py sampler   --preset tiny      (CPU, seconds: random tiny model, character tokenizer)
  python bench.py grpo-step --preset tiny
  python bench.py sft       --preset tiny
  python bench.py head      --repeats 5 (the RL estimator's fp32 output head vs bf16 logits at the 8B head size)
  python bench.py sampler   --preset llada-8b  (1 GPU: the real architecture with random bf16 weights, built
  python bench.py grpo-step --preset llada-8b   directly on the GPU; d1's rollout: 96 completions x 256 tokens,
  python bench.py sft       --preset llada-8b   128 steps, block 32; LoRA r=128, mu=12; SFT at 4096 tokens)
  python bench.py sampler --model CKPT --prompts FILE   (a trained checkpoint: agreement + accuracy per mode)
  python bench.py gpu-report                 (1 GPU, under 8 minutes: everything a lent GPU should measure, below)
  python bench.py gpu-report --device cpu --preset tiny   (its smoke test on a CPU, in seconds; run by the tests)

How figures are taken: every figure is the median of --repeats timed runs after --warmup untimed ones
(a warm-up runs the same shapes with one denoising step per block, and mu=1 for the GRPO step). The sampler
modes run interleaved (repeat 1 of every mode, then repeat 2 in reverse order, ...) in one process, and each
speed-up is the median over repeats of that repeat's ratio, so the drift of a shared machine hits all modes
alike; on a CPU with one thread the sampler's times are process CPU time, which other jobs do not inflate.
- tokens/s: completion tokens (sampler, GRPO generation) or trained tokens (SFT, GRPO updates) per second;
- ms/step: time per model call (one denoising step of a whole batch; the reference decodes the same
  batches, with the same padding mask: every sampler ratio is at equal batch);
- model calls: forwards over all batches (threshold modes stop a block early; the fixed-floor rule never
  calls more often than the schedule, Fast-dLLM's "+any" rule can);
- agreement: fraction of completion tokens equal to the exact sampler's on the same prompts and noise;
- peak memory: torch.cuda.max_memory_allocated of the figure on a GPU; on a CPU the process's peak RSS so far
  (monotone: it includes whatever ran before in the process);
- MFU (GPU only): model FLOPs / time / --peak-flops. Model FLOPs of a forward = 2 x (block weight parameters)
  per token forwarded + attention 4 x q_len x k_len x d_model per layer and row + 2 x d_model x vocab per token
  the output head runs on; x3 for forward + backward (the usual 6N, also with LoRA, whose frozen weights need
  no weight gradient: an upper bound of the work done). LoRA adapters and the sampler's float64 arithmetic are
  not counted.
Random weights (no --model): prompts are random token ids of random lengths in [3/4, 1] x --prompt-length,
left-padded with an attention mask (as in RL). On random weights no confidence reaches a 0.9 threshold, so
the threshold modes commit what the schedule commits (fixed-floor rule) or one token per step (+any): their speed
needs a trained model (--model).
--prompts FILE: one user message per line, or JSONL rows {"prompt": ...} with "answer" (accuracy = exact match
of the completion text) or "task" + "target" (accuracy = rewards.eval_score), chat-templated like eval.py.

gpu-report: one command, no arguments, for a session that is lent a GPU. It builds LLaDA-8B with random bf16
weights directly on the GPU (no download, no tokenizer) and measures, at d1's per-GPU shapes (2 prompts x G=6 =
12 completions, prompt <= 200, gen 256, block 32, 128 steps; LoRA r=128, micro-batch 6, mu=12):
  0 device: properties and the TFLOP/s of an 8192^3 bf16 matmul (the ceiling for everything below);
  1 memory: peak memory of the weights, a rollout (exact and dual cache), the estimator's forward+backward +
    AdamW step with and without activation checkpointing, an SFT step at 4096 tokens; each beside
    train_utils.memory_budget's computed prediction;
  2 sampler: tokens/s, model calls and MFU of the exact, prefix-cache, dual-cache and threshold-0.9 modes;
  3 grpo: one diffu-GRPO round (rollout, old/ref log-probs, 12 updates; grpo_round, as in grpo-step) and d1's
    GSM8K run projected from it (642 rounds on 8 GPUs) beside its arithmetic limit at the measured matmul rate;
  4 numerics: bf16 (bf16 weights + autocast) vs fp32 on a mid-size random model: logits, estimator log-probs,
    greedy tokens;
  5 sdpa: which SDPA backend runs with the padding mask and without it (the profiler's op name), each
    backend's forward and forward+backward time.
Each section runs in a time box (its SECTION_SHARE of the time left when it starts; --budget, default 420 s):
a section is stopped between model calls when it runs past it, a section that raises is recorded with its error,
and the others run either way. gpu-report.json and gpu-report.md (tables ready to paste) are rewritten after each
section, so a run cut short still leaves what it measured. Exit status 1 when a section is not ok.

Longer than ~650 lines, on purpose: independent benchmarks, one section per subcommand (sampler, grpo-step, sft,
head, gpu-report), each readable on its own; they share the measuring helpers at the top and the model-building
code, which splitting into several files would duplicate or scatter.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time
import traceback
import types
import warnings
from pathlib import Path

import torch

from diffu_grpo import TASK_MU, TASK_STEPS, completion_logprobs, completion_mask, group_advantages
from cli import (ArgumentParser, bounded, nonneg_float, nonneg_int, positive_float, positive_int, probability,
                 resolve_device, run_cli)
from model import (LLaDA, LoRALinear, apply_lora, example_generator, load_adapter, load_tokenizer, make_char_tokenizer,
                   param_count, preset_config)
from train_utils import memory_budget
from sample import generate, left_pad
from tests.reference_sampler import reference_generate  # the literal batched oracle of the tests

# Per preset: model, device, sizes. Flags override each value.
PRESETS = {
    "tiny": dict(arch="tiny", device="cpu", dtype="float32", repeats=5, warmup=1,
                 batch=8, prompt_length=32, gen_length=64, block_length=16, steps=32,
                 prompts_per_step=2, num_generations=4, gen_batch_size=8, micro_batch_size=4, mu=2,
                 grpo_lora_r=8, grpo_lora_alpha=4.0, sft_batch=4, sft_length=256, sft_lora_r=8, sft_lora_alpha=16.0),
    "llada-8b": dict(arch="llada-8b", device="cuda", dtype="bfloat16", repeats=3, warmup=1,
                     batch=96, prompt_length=200, gen_length=256, block_length=32, steps=128,
                     prompts_per_step=16, num_generations=6, gen_batch_size=48, micro_batch_size=6, mu=12,
                     grpo_lora_r=128, grpo_lora_alpha=64.0, sft_batch=1, sft_length=4096, sft_lora_r=128,
                     sft_lora_alpha=256.0),
}
# "+any": the threshold modes with Fast-dLLM's rule (every position above the threshold, at least one per step)
# instead of the default fixed-floor rule (max(scheduled k, count above the threshold)).
SAMPLER_MODES = ("reference", "exact", "prefix", "dual", "threshold", "threshold+any", "prefix+threshold",
                 "dual+threshold", "dual+threshold+any")
# Peak dense bf16 FLOP/s (no sparsity) by GPU name; --peak-flops overrides.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}

# -----------------------------------------------------------------------------
# Measuring


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def forward_flops(cfg, rows: int, q_len: int, k_len: int, head_tokens: int) -> int:
    """Model FLOPs of one forward: block matmuls on rows*q_len tokens, attention, output head on head_tokens."""
    D, n = cfg.d_model, cfg.n_layers
    block_params = 4 * D * D + 3 * D * cfg.mlp_hidden_size
    return (2 * n * block_params * rows * q_len + 4 * n * rows * q_len * k_len * D
            + 2 * D * cfg.embedding_size * head_tokens)


class TimeBoxExceeded(Exception):
    """A gpu-report section ran past its time box (raised between model calls, never inside one)."""


class CallCounter:
    """Counts the model's forward calls and their FLOPs (a forward pre-hook: it sees every call that goes through
    LLaDA.forward, as the sampler, the reference and completion_logprobs do). With `deadline` set (a
    time.perf_counter() value), a call that starts after it raises TimeBoxExceeded: that is how gpu-report stops
    a slow section within one model call."""

    def __init__(self, model: LLaDA):
        self.cfg, self.calls, self.flops = model.config, 0, 0
        self.deadline = None
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def reset(self):
        self.calls, self.flops = 0, 0

    def hook(self, module, args, kwargs):
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise TimeBoxExceeded(f"time box exceeded after {self.calls} model calls of this measurement")
        ids = args[0] if args else kwargs["input_ids"]
        B, W = ids.shape
        kv = kwargs.get("kv_cache")
        k_len = kv.length if kv is not None and kv.filled else W
        pos = args[2] if len(args) > 2 else kwargs.get("positions")
        if pos is None:
            n_head = W
        elif isinstance(pos, slice):
            n_head = len(range(*pos.indices(W)))
        else:
            n_head = pos.numel()
        self.calls += 1
        self.flops += forward_flops(self.cfg, B, W, k_len, B * n_head)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


# -----------------------------------------------------------------------------
# Model, prompts


def build(args):
    """(model, tokenizer or None, description). Random weights from the preset, or a checkpoint (--model)."""
    dtype = getattr(torch, args.dtype)
    if args.model:
        tokenizer = load_tokenizer(args.model)
        model = LLaDA.from_pretrained(args.model, dtype=dtype, device=args.device)
        if args.adapter:
            load_adapter(model, args.adapter)
        desc = f"{args.model}" + (f" + {args.adapter}" if args.adapter else "")
    else:
        tokenizer = make_char_tokenizer() if args.arch == "tiny" else None
        overrides = {} if args.layers is None else {"n_layers": args.layers}
        cfg = preset_config(args.arch, tokenizer, **overrides)
        # Built on the meta device, then allocated directly on the target device in the target dtype (an 8B model
        # never exists in fp32 or on the CPU), then randomly initialised there.
        with torch.device("meta"):
            model = LLaDA(cfg)
        model = model.to(dtype).to_empty(device=args.device).init_weights(args.seed)
        desc = f"random {args.arch}" + (f" ({args.layers} layers)" if args.layers is not None else "")
    n = model.num_params()
    return model.eval(), tokenizer, f"{desc}, {n / 1e6:.1f}M parameters"


def random_prompts(cfg, n: int, length: int, seed: int, min_frac: float = 0.75) -> list[list[int]]:
    """n token lists of random lengths in [min_frac, 1] x length, ids drawn from the non-special vocabulary."""
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted({cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id}))
    ok = torch.ones(cfg.vocab_size, dtype=torch.bool)
    ok[special[special < cfg.vocab_size]] = False
    pool = ok.nonzero().squeeze(1)
    lo = max(1, int(min_frac * length))
    lengths = torch.randint(lo, length + 1, (n,), generator=g).tolist()
    return [pool[torch.randint(len(pool), (k,), generator=g)].tolist() for k in lengths]


def read_prompt_file(path: str) -> list[dict]:
    """Rows {"prompt", and optionally "answer" or "task" + "target"} from a JSONL file, or one prompt per line."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = [{"prompt": line} for line in text.splitlines() if line.strip()]
    for i, r in enumerate(rows):
        if "prompt" not in r:
            raise ValueError(f"{path}: row {i} has no 'prompt' field")
    return rows


def score(rows: list[dict], texts: list[str]) -> float | None:
    """Mean accuracy over the rows that carry an answer or a task target; None if none do."""
    verdicts = []
    for r, text in zip(rows, texts):
        if "answer" in r:
            verdicts.append(float(text.strip() == str(r["answer"]).strip()))
        elif "task" in r and "target" in r:
            from rewards import eval_score
            target = tuple(r["target"]) if isinstance(r["target"], list) else r["target"]
            verdicts.append(eval_score(r["task"], text, target))
    return sum(verdicts) / len(verdicts) if verdicts else None


# -----------------------------------------------------------------------------
# sampler


def parse_mode(mode: str, threshold: float) -> tuple[str, float | None, str]:
    """'exact' | 'prefix' | 'dual' | '[prefix+|dual+]threshold[+any]' -> generate's (cache, threshold,
    threshold_rule) arguments."""
    parts = mode.split("+")
    cache = parts[0] if parts[0] in ("prefix", "dual") else "none"
    return cache, (threshold if "threshold" in parts else None), ("any" if "any" in parts else "fixed-floor")


def sample_mode(model, batches, mode: str, steps: int, opts) -> torch.Tensor:
    """Completions (rows, gen_length) of one sampler mode over `batches` [(row indices, ids, attention mask)].
    Row i draws its noise from its own generator seeded from (opts.seed, i): the same in every mode, so modes
    can be compared token by token. "reference" is tests/reference_sampler.py on the same batches (equal batch,
    same padding mask; its noise is one generator per batch). opts: seed, gen_length, block_length, temperature,
    threshold."""
    outs = []
    for idx, ids, am in batches:
        if mode == "reference":
            g = torch.Generator(ids.device).manual_seed(opts.seed * 100003 + idx[0])
            out = reference_generate(model, ids, steps, opts.gen_length, opts.block_length, opts.temperature,
                                     generator=g, attention_mask=am)
        else:
            cache, threshold, rule = parse_mode(mode, opts.threshold)
            gens = [torch.Generator(ids.device).manual_seed(opts.seed * 100003 + i) for i in idx]  # one per row
            out = generate(model, ids, am, steps=steps, gen_length=opts.gen_length, block_length=opts.block_length,
                           temperature=opts.temperature, generator=gens, threshold=threshold, cache=cache,
                           threshold_rule=rule)
        outs.append(out[:, -opts.gen_length:])
    return torch.cat(outs)


def interleaved(run, modes, steps: int, repeats: int, counter: CallCounter, device, res: dict | None = None,
                fits=None, clock=time.perf_counter) -> dict:
    """Time run(mode, steps) for every mode: repeat 1 of each mode, then repeat 2, ..., the order reversed every
    other repeat (so the drift of a shared machine hits all modes alike, and no mode always runs first). Returns
    {mode: dict(times=[seconds, ...], calls, flops, peak_mib, output)}, filled run by run into `res` when given (a
    time-boxed caller keeps what finished). fits(seconds) -> bool: whether one more repeat, as long as the last
    one, may start (None: always). clock: time.perf_counter (wall) or time.process_time (CPU, one thread)."""
    res = {} if res is None else res
    last = 0.0
    for r in range(repeats):
        if r and fits is not None and not fits(last):
            break
        t_repeat = time.perf_counter()
        for mode in modes if r % 2 == 0 else modes[::-1]:
            counter.reset()
            reset_peak(device)
            sync(device)
            t0 = clock()
            out = run(mode, steps)
            sync(device)
            entry = res.setdefault(mode, dict(times=[]))
            entry["times"].append(clock() - t0)
            entry.update(calls=counter.calls, flops=counter.flops, peak_mib=peak_mib(device), output=out)
        last = time.perf_counter() - t_repeat
    return res


def bench_sampler(args):
    model, tokenizer, desc = build(args)
    cfg, device = model.config, args.device
    G, bl, T = args.gen_length, args.block_length, args.temperature
    if args.prompts:
        if tokenizer is None:
            raise ValueError("--prompts needs a tokenizer: pass --model CKPT or --preset tiny")
        from data import format_prompt
        rows = read_prompt_file(args.prompts)
        prompts = [tokenizer(format_prompt(tokenizer, r["prompt"], args.prefill), add_special_tokens=False)["input_ids"]
                   for r in rows]
    else:
        rows = [{} for _ in range(args.batch)]
        prompts = random_prompts(cfg, args.batch, args.prompt_length, args.seed)
    n = len(prompts)
    batches = []  # (row indices, ids, attention mask)
    for r in range(0, n, args.batch):
        ids, am = left_pad(prompts[r:r + args.batch], cfg.pad_token_id, device)
        batches.append((list(range(r, min(n, r + args.batch))), ids, am))
    modes = args.modes.split(",")
    unknown = set(modes) - set(SAMPLER_MODES)
    if unknown:
        raise ValueError(f"unknown sampler modes {sorted(unknown)}; choose from {SAMPLER_MODES}")
    counter = CallCounter(model)

    def run(mode: str, steps: int) -> torch.Tensor:
        """Completions (rows, G) of one mode over all prompts, in the same batches for every mode (the reference
        included: equal batch, same padding mask)."""
        return sample_mode(model, batches, mode, steps, args)

    for _ in range(args.warmup):
        for mode in modes:
            run(mode, G // bl)
    # With one CPU thread the figures are the process's CPU time: other jobs on shared cores inflate wall time,
    # not CPU time. Otherwise (GPU, several threads) wall time.
    cpu_clock = torch.device(device).type == "cpu" and torch.get_num_threads() == 1
    res = interleaved(run, modes, args.steps, args.repeats, counter, device,
                      clock=time.process_time if cpu_clock else time.perf_counter)
    times = {m: res[m]["times"] for m in modes}
    calls, flops = {m: res[m]["calls"] for m in modes}, {m: res[m]["flops"] for m in modes}
    peak, outputs = {m: res[m]["peak_mib"] for m in modes}, {m: res[m]["output"] for m in modes}

    per_token = {m: [t / (n * G) for t in times[m]] for m in modes}  # seconds per completion token

    def speedup(m, base):
        if base not in modes:
            return None
        return statistics.median(b / a for a, b in zip(per_token[m], per_token[base]))

    texts = {m: tokenizer.batch_decode(outputs[m].cpu(), skip_special_tokens=True) if tokenizer else None for m in modes}
    peak_flops = args.peak_flops
    out_rows = []
    for m in modes:
        t = statistics.median(times[m])
        if m == "exact":
            agree = 1.0
        elif "exact" in modes and (m != "reference" or T == 0):
            agree = (outputs[m] == outputs["exact"]).float().mean().item()
        else:
            agree = None  # the reference draws its noise differently: no token agreement at temperature > 0
        acc = score(rows, texts[m]) if texts[m] is not None else None
        mfu = flops[m] / t / peak_flops if peak_flops else None
        out_rows.append([m, str(calls[m]), fmt(1e3 * t / max(calls[m], 1), ".2f"),
                         fmt(n * G / t, ".1f"), fmt(speedup(m, "reference"), ".2f"),
                         fmt(speedup(m, "exact"), ".2f"), fmt(None if agree is None else 100 * agree, ".1f"),
                         fmt(None if acc is None else 100 * acc, ".1f"), fmt(peak[m], ".0f"),
                         fmt(None if mfu is None else 100 * mfu, ".1f")])
    print(header(args, "sampler", desc) + f"\n{n} prompts" + (f" from {args.prompts}" if args.prompts else
          f" of {max(1, 3 * args.prompt_length // 4)}-{args.prompt_length} random tokens (left-padded)")
          + f", batch {args.batch}, gen length {G}, block {bl}, {args.steps} steps, temperature {T}, "
          f"threshold {args.threshold}; reference: tests/reference_sampler.py on the same batches (equal batch, "
          f"same padding mask); +any: Fast-dLLM's threshold rule, else fixed-floor; times: "
          f"{'process CPU time (1 thread)' if cpu_clock else 'wall clock'}\n")
    print(table(["mode", "model calls", "ms/step", "tokens/s", "x vs reference", "x vs exact",
                 "agreement w/ exact (%)", "accuracy (%)", "peak MiB", "MFU (%)"], out_rows))


# -----------------------------------------------------------------------------
# One diffu-GRPO rollout round


RL_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj")  # d1's RL adapters (diffu_grpo.py --lora-targets)
SFT_TARGETS = ("q_proj", "k_proj", "v_proj")  # d1's SFT adapters (sft.py's default)


def grpo_round(model, optimizer, params, args, prompt_ids, prompt_mask, counter: CallCounter, autocast, s: int,
               steps: int, mu: int, res: dict | None = None) -> dict:
    """One rollout round with diffu_grpo.py's own functions (rollout, old_and_ref_logprobs, update) and random
    rewards (the bench has no task), on one process: rollouts of the (n, P) left-padded prompts (groups of
    args.num_generations consecutive rows), old/ref log-probs, mu optimizer steps. Returns {"generation" |
    "old/ref log-probs" | "updates": dict(seconds, flops, tokens, peak_mib)}, filled phase by phase into `res`
    when given (a time-boxed caller keeps the phases that finished). args: seed, num_generations, gen_batch_size,
    gen_length, block_length, temperature, threshold, cache, micro_batch_size, p_mask_prompt, eps, beta and
    optionally logp_batch_size; everything else is diffu_grpo.py's default."""
    import diffu_grpo as rl
    res = {} if res is None else res
    cfg, device = model.config, prompt_ids.device
    n, P, mask_id, gidx = len(prompt_ids), prompt_ids.shape[1], cfg.mask_token_id, list(range(len(prompt_ids)))
    a = rl.parse_args([])  # diffu_grpo's flags, with the bench's values
    for k in ("seed", "gen_batch_size", "gen_length", "block_length", "temperature", "threshold", "cache",
              "micro_batch_size", "p_mask_prompt", "eps", "beta"):
        setattr(a, k, getattr(args, k))
    a.logp_batch_size, a.diffusion_steps, a.mu = getattr(args, "logp_batch_size", None), steps, mu

    def start():
        counter.reset()
        reset_peak(device)
        sync(device)
        return time.perf_counter()

    def done(phase, t0, flops, tokens):
        sync(device)
        res[phase] = dict(seconds=time.perf_counter() - t0, flops=flops, tokens=tokens, peak_mib=peak_mib(device))

    t0 = start()
    completion_ids = rl.rollout(model, prompt_ids, prompt_mask, gidx, s, a, autocast)  # (n, gen_length)
    done("generation", t0, counter.flops, n * args.gen_length)
    rewards = torch.rand(n, generator=example_generator(args.seed, 3, s))
    cmask = completion_mask(completion_ids, cfg.eos_token_id)
    seeds = torch.randint(0, 2**62, (mu,), generator=example_generator(args.seed, 2, s)).tolist()
    rnd = rl.Round(s, prompt_ids, prompt_mask, completion_ids, gidx, rewards,
                   group_advantages(rewards, args.num_generations).to(device), cmask, cmask.sum().item(), seeds)
    t0 = start()
    old, ref = rl.old_and_ref_logprobs(model, None, rnd, mu, a, autocast, mask_id)
    passes = (mu - 1) + (mu if args.beta > 0 else 0)  # inner step 0 reuses the policy's own log-probs
    done("old/ref log-probs", t0, counter.flops, passes * n * (P + args.gen_length))
    t0 = start()
    for k in range(mu):
        rl.update(model, optimizer, params, rnd, k, old, ref, a, autocast, mask_id, 3e-6, False, 1)
    done("updates", t0, 3 * counter.flops, mu * n * (P + args.gen_length))  # forward + backward = 3 forwards
    model.eval()
    return res


def bench_grpo_step(args):
    """One rollout round of diffu_grpo.main with its own functions (rollout, old_and_ref_logprobs, update) and
    flags; only the rewards are random (the bench has no task) and there is one process."""
    model, _, desc = build(args)
    cfg, device = model.config, args.device
    apply_lora(model, args.lora_r, args.lora_alpha, 0.0, RL_TARGETS, seed=args.seed)  # RL has no dropout
    model.gradient_checkpointing = args.grad_checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-6, betas=(0.9, 0.99), weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=getattr(torch, args.dtype)) if torch.device(device).type == "cuda" \
        else contextlib.nullcontext()
    Gn, n = args.num_generations, args.prompts_per_step * args.num_generations
    prompts = [p for p in random_prompts(cfg, args.prompts_per_step, args.prompt_length, args.seed) for _ in range(Gn)]
    prompt_ids, prompt_mask = left_pad(prompts, cfg.pad_token_id, device)
    counter = CallCounter(model)
    for _ in range(args.warmup):  # one denoising step per block, mu = 1
        grpo_round(model, optimizer, params, args, prompt_ids, prompt_mask, counter, autocast, -1,
                   args.gen_length // args.block_length, 1)
    runs = [grpo_round(model, optimizer, params, args, prompt_ids, prompt_mask, counter, autocast, i, args.steps,
                       args.mu) for i in range(args.repeats)]
    peak = max(ph["peak_mib"] for r in runs for ph in r.values())
    phases = list(runs[0])
    med = {ph: statistics.median(r[ph]["seconds"] for r in runs) for ph in phases}
    total = statistics.median(sum(r[ph]["seconds"] for ph in phases) for r in runs)
    out_rows = []
    for ph in phases:
        fl, tokens = runs[0][ph]["flops"], runs[0][ph]["tokens"]
        mfu = fl / med[ph] / args.peak_flops if args.peak_flops else None
        out_rows.append([f"{args.mu} updates" if ph == "updates" else ph, fmt(med[ph], ".3f"),
                         fmt(100 * med[ph] / total, ".0f"), str(tokens), fmt(tokens / med[ph], ".0f"),
                         fmt(None if mfu is None else 100 * mfu, ".1f")])
    out_rows.append(["rollout round", fmt(total, ".3f"), "100", "-", "-", "-"])
    print(header(args, "grpo-step", desc) + f"\n{args.prompts_per_step} prompts x {Gn} = {n} completions of "
          f"{args.gen_length} tokens (prompts {max(1, 3 * args.prompt_length // 4)}-{args.prompt_length} tokens); "
          f"sampler: {args.steps} steps, block {args.block_length}, temperature {args.temperature}, cache "
          f"{args.cache}, threshold {args.threshold}, {args.gen_batch_size} per call; LoRA r={args.lora_r} on "
          f"q/k/v/up, mu={args.mu}, micro-batch {args.micro_batch_size}, log-prob batch "
          f"{args.logp_batch_size or n}, beta {args.beta}; random rewards; peak memory {peak:.0f} MiB. tokens: "
          f"generation = completion tokens; log-probs and updates = tokens forwarded (prompt + completion, per "
          f"mask and pass)\n")
    print(table(["phase", "seconds", "% of round", "tokens", "tokens/s", "MFU (%)"], out_rows))


# -----------------------------------------------------------------------------
# SFT


def sft_batch(cfg, B: int, L: int, seed: int, device) -> dict:
    """A random SFT batch for sft.sft_loss: ids (B, L), the first 1/8 prompt (never masked), rates t (B,),
    uniforms u (B, L); `masked` = how many positions the output head runs on."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(random_prompts(cfg, B, L, seed, min_frac=1.0)).to(device)  # (B, L)
    answer_mask = (torch.arange(L) >= L // 8).expand(B, L).to(device)
    t = torch.rand(B, generator=g).to(device)
    u = torch.rand(B, L, generator=g).to(device)
    p = 1e-3 + (1 - 1e-3) * t
    masked = int((answer_mask & (u < p[:, None])).sum())
    return dict(ids=ids, answer_mask=answer_mask, t=t, u=u, masked=masked)


def sft_iteration(model, optimizer, batch: dict, autocast):
    """sft.sft_loss + backward + AdamW step (the model in train mode)."""
    from sft import sft_loss
    with autocast:
        loss = sft_loss(model, batch["ids"], batch["answer_mask"], batch["t"], batch["u"], model.config.mask_token_id)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench_sft(args):
    model, _, desc = build(args)
    cfg, device = model.config, args.device
    apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, SFT_TARGETS, seed=args.seed)
    model.gradient_checkpointing = args.grad_checkpointing
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=getattr(torch, args.dtype)) if torch.device(device).type == "cuda" \
        else contextlib.nullcontext()
    B, L = args.batch, args.length
    batch = sft_batch(cfg, B, L, args.seed, device)
    flops = 3 * forward_flops(cfg, B, L, L, batch["masked"])  # the output head runs on the masked positions only
    for _ in range(args.warmup):
        sft_iteration(model, optimizer, batch, autocast)
    reset_peak(device)
    ts = [timed(lambda: sft_iteration(model, optimizer, batch, autocast), device)[1] for _ in range(args.repeats)]
    dt = statistics.median(ts)
    mfu = flops / dt / args.peak_flops if args.peak_flops else None
    print(header(args, "sft", desc) + f"\nsft.sft_loss + backward + AdamW step; batch {B} x {L} random tokens "
          f"(1/8 prompt), LoRA r={args.lora_r} on q/k/v, grad checkpointing {args.grad_checkpointing}\n")
    print(table(["what", "ms/iter", "tokens/s", "peak MiB", "MFU (%)"],
                [["fwd+bwd+step", fmt(1e3 * dt, ".1f"), fmt(B * L / dt, ".0f"), fmt(peak_mib(device), ".0f"),
                  fmt(None if mfu is None else 100 * mfu, ".1f")]]))


# -----------------------------------------------------------------------------
# gpu-report: what a lent GPU should measure, in one time-boxed command

# Sizes per preset. llada-8b: d1's per-GPU shapes on its 8 GPUs (16 prompts x G=6 per round = 2 prompts x 6 per
# GPU, micro-batch 6: 2 micro-steps per optimizer step, mu = 12); tiny: seconds on a CPU (the test suite).
REPORT_SHAPES = {
    "llada-8b": dict(prompts=2, generations=6, prompt_length=200, gen_length=256, block_length=32, steps=128,
                     temperature=0.9, micro_batch=6, mu=TASK_MU["gsm8k"], lora_r=128, lora_alpha=64.0, sft_length=4096,
                     sft_lora_alpha=256.0, sampler_repeats=2, grpo_repeats=1, matmul=8192,
                     numerics=dict(d_model=1024, n_layers=8, n_heads=8, n_kv_heads=8, mlp_hidden_size=4096),
                     numerics_rows=8, numerics_gen=64),
    "tiny": dict(prompts=2, generations=6, prompt_length=24, gen_length=32, block_length=16, steps=8,
                 temperature=0.9, micro_batch=6, mu=2, lora_r=8, lora_alpha=4.0, sft_length=128, sft_lora_alpha=16.0,
                 sampler_repeats=2, grpo_repeats=1, matmul=256, numerics=dict(), numerics_rows=4, numerics_gen=16),
}
# d1's GSM8K run (method.md): 7700 optimizer steps at mu = 12, i.e. 642 rollout rounds, on 8 GPUs.
D1_GSM8K = dict(rounds=math.ceil(TASK_STEPS["gsm8k"] / TASK_MU["gsm8k"]), gpus=8)
SECTIONS = ("device", "memory", "sampler", "grpo", "numerics", "sdpa")
SECTION_TITLES = {"device": "device and bf16 matmul throughput",
                  "memory": "memory: measured peaks beside memory_budget",
                  "sampler": "sampler at the d1 rollout shape",
                  "grpo": "one diffu-GRPO round at d1's per-GPU shape",
                  "numerics": "numerics: bf16 autocast vs fp32",
                  "sdpa": "SDPA backends with and without the padding mask"}
# Each section's time box is its share of the time left when it starts (so time an early section leaves unused
# goes to the later ones, and no section can take another's share).
SECTION_SHARE = {"device": 0.02, "memory": 0.12, "sampler": 0.40, "grpo": 0.28, "numerics": 0.10, "sdpa": 0.08}
MODEL_SECTIONS = ("memory", "sampler", "grpo")  # the ones that use the preset's model


def time_box(remaining: float, names: list[str]) -> float:
    """Seconds for section names[0], when `remaining` seconds are left for it and the sections after it."""
    return max(0.0, remaining) * SECTION_SHARE[names[0]] / sum(SECTION_SHARE[n] for n in names)


def strip_lora(model: LLaDA) -> LLaDA:
    """Undo apply_lora without touching the base weights: each LoRALinear becomes a plain nn.Linear holding the
    same weight tensor (no copy; the adapters go, and their memory with them)."""
    for block in model.transformer.blocks:
        for name, m in list(block.named_children()):
            if isinstance(m, LoRALinear):
                with torch.device("meta"):  # no allocation: the weight is assigned below
                    lin = torch.nn.Linear(m.weight.shape[1], m.weight.shape[0], bias=False)
                lin.weight = m.weight
                setattr(block, name, lin)
    return model


@contextlib.contextmanager
def lora_applied(model: LLaDA, r: int, alpha: float, targets, seed: int):
    """apply_lora for the duration of a measurement; yields the trainable parameters. The model leaves it as it
    came in (no adapters, eval mode, no gradient checkpointing), also when the measurement fails."""
    apply_lora(model, r, alpha, 0.05, targets, seed=seed)
    try:
        yield [p for p in model.parameters() if p.requires_grad]
    finally:
        strip_lora(model)
        model.gradient_checkpointing = False
        model.eval()


class Report:
    """What the sections share: arguments, sizes, the model (built once), its call counter (which stops a section
    at its deadline between model calls), the measured matmul throughput, and the report written after each
    section (gpu-report.json + gpu-report.md in --out)."""

    def __init__(self, args, argv: list[str]):
        self.args, self.device = args, torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = getattr(torch, args.dtype)
        self.shape = REPORT_SHAPES[args.preset]
        self.t0 = time.perf_counter()
        self.end = self.t0 + args.budget
        self.deadline = math.inf
        self.model = self.tokenizer = self.counter = self.model_error = None
        self.weights_bytes = self.build_seconds = self.matmul_flops = None
        self.out = Path(args.out)
        name = torch.cuda.get_device_name(self.device) if self.cuda else f"cpu ({torch.get_num_threads()} threads)"
        self.data = {"meta": dict(
            command="python bench.py gpu-report " + " ".join(argv),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            device_type=self.device.type, device_name=name, torch=torch.__version__, cuda=torch.version.cuda,
            preset=args.preset, dtype=args.dtype, layers=args.layers, budget_s=args.budget, commit=git_commit(),
            peak_flops_datasheet=args.peak_flops), "sections": {}}

    def log(self, msg: str):
        print(f"[gpu-report {time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def check(self):
        if time.perf_counter() > self.deadline:
            raise TimeBoxExceeded("time box exceeded")

    def fits(self, seconds: float) -> bool:
        return time.perf_counter() + seconds <= self.deadline

    def autocast(self):
        """The run's precision: bf16 weights under bf16 autocast (fp32 LoRA adapters, norms and log-softmax)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def free(self):
        """Give the memory of the last measurement back (CUDA: to the driver) and restart the peak counter."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else int(peak_mib(self.device) * 2**20)

    def allocated_bytes(self) -> int:
        """CUDA: bytes allocated now. CPU: the bytes of the model's tensors (the allocator keeps no count)."""
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])

    def build_model(self):
        t0 = time.perf_counter()
        self.model, self.tokenizer, desc = build(self.args)
        sync(self.device)
        self.build_seconds = time.perf_counter() - t0
        self.free()
        self.weights_bytes = self.allocated_bytes()
        self.counter = CallCounter(self.model)
        self.data["meta"].update(model=desc, params=self.model.num_params(), build_seconds=round(self.build_seconds, 1))

    def need_model(self) -> LLaDA:
        if self.model is None:
            raise RuntimeError(f"the model could not be built: {self.model_error}")
        return self.model

    def write(self):
        self.out.mkdir(parents=True, exist_ok=True)
        self.data["meta"]["seconds"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "gpu-report.json").write_text(json.dumps(self.data, indent=2) + "\n")
        (self.out / "gpu-report.md").write_text(report_markdown(self.data))


def git_commit() -> str | None:
    """The checkout's commit, if this folder is a git checkout and git is installed (a copied tree may be neither)."""
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def new_section(name: str) -> dict:
    return dict(title=SECTION_TITLES[name], status="running", tables=[], data=[], summary=[], notes=[])


def add_table(rec: dict, caption: str, columns: list[str]) -> list:
    """A new table of the section; returns its (empty) row list."""
    rec["tables"].append(dict(caption=caption, columns=columns, rows=[]))
    return rec["tables"][-1]["rows"]


def rl_prompts(rep: Report) -> tuple[torch.Tensor, torch.Tensor]:
    """d1's per-GPU rollout batch: prompts x generations rows (each prompt repeated for its group), random tokens
    of random lengths in [3/4, 1] x prompt_length, left-padded: ids and attention mask (n, P)."""
    S = rep.shape
    rows = [p for p in random_prompts(rep.model.config, S["prompts"], S["prompt_length"], rep.args.seed)
            for _ in range(S["generations"])]
    return left_pad(rows, rep.model.config.pad_token_id, rep.device)


def rl_args(rep: Report) -> types.SimpleNamespace:
    """grpo_round's settings: d1's (diffu_grpo.py's defaults), all completions of a GPU in one sampler call."""
    S = rep.shape
    return types.SimpleNamespace(seed=rep.args.seed, num_generations=S["generations"],
                                 gen_batch_size=S["prompts"] * S["generations"], gen_length=S["gen_length"],
                                 block_length=S["block_length"], temperature=S["temperature"], threshold=None,
                                 cache="none", micro_batch_size=S["micro_batch"], p_mask_prompt=0.15, eps=0.5,
                                 beta=0.04)


def size(x) -> str:
    """Bytes as GiB (or MiB below 1 GiB: the CPU smoke test's sizes)."""
    if x is None:
        return "-"
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def tflops(x) -> str:
    return fmt(None if x is None else x / 1e12, ".3g")


def pct(x) -> str:
    return fmt(None if x is None else 100 * x, ".1f")


def section_device(rep: Report, rec: dict):
    """Device properties and the throughput of one big bf16 matmul (random data): the ceiling the other
    sections' FLOP rates are compared with."""
    rows = add_table(rec, "", ["what", "value"])
    if rep.cuda:
        p = torch.cuda.get_device_properties(rep.device)
        info = dict(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version())
    else:
        info = dict(name="cpu", threads=torch.get_num_threads())
    info.update(torch=torch.__version__, cuda=torch.version.cuda)
    rows.extend([k, str(v)] for k, v in info.items())
    n, reps = rep.shape["matmul"], 10
    dt = torch.bfloat16 if rep.cuda else rep.dtype  # CPU: the preset's dtype (CPU bf16 matmuls are emulated)
    g = torch.Generator(rep.device).manual_seed(rep.args.seed)
    a, b = (torch.randn(n, n, generator=g, device=rep.device, dtype=dt) for _ in range(2))
    c = torch.empty(n, n, device=rep.device, dtype=dt)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    _, sec = timed(lambda: [torch.matmul(a, b, out=c) for _ in range(reps)], rep.device)
    rep.matmul_flops = 2 * n**3 * reps / sec
    info.update(matmul=f"{n}x{n}x{n} {str(dt).removeprefix('torch.')}", matmul_tflops=rep.matmul_flops / 1e12)
    rec["data"].append(info)
    rows.append([f"{n}x{n}x{n} {str(dt).removeprefix('torch.')} matmul (random data, mean of {reps})",
                 f"{tflops(rep.matmul_flops)} TFLOP/s"])
    if rep.args.peak_flops:
        rows.append(["datasheet dense bf16 peak (MFU's denominator)", f"{rep.args.peak_flops / 1e12:.0f} TFLOP/s"])
    rec["summary"].append([f"{str(dt).removeprefix('torch.')} matmul {n}^3", f"{tflops(rep.matmul_flops)} TFLOP/s",
                           f"datasheet {rep.args.peak_flops / 1e12:.0f}" if rep.args.peak_flops else "-"])


def section_memory(rep: Report, rec: dict):
    """Peak memory of the run's pieces on one device, each beside train_utils.memory_budget's prediction for it."""
    model = rep.need_model()
    cfg, S, seed, cb = model.config, rep.shape, rep.args.seed, rep.dtype.itemsize
    r, mb = S["lora_r"], S["micro_batch"]
    rows = add_table(rec, "measured: torch.cuda.memory_allocated for the weights rows, else "
                     "torch.cuda.max_memory_allocated (the peak of all live tensors, weights included, since the "
                     "measurement started; PyTorch's caching allocator reserves somewhat more); budget: "
                     "train_utils.memory_budget for one GPU (computed)" if rep.cuda else
                     "CPU: 'measured' is the process's peak RSS so far (monotone: it includes everything before); "
                     "budget: train_utils.memory_budget (computed)",
                     ["what", "measured", "budget (computed)", "measured / budget", "seconds"])

    def add(what, measured, budget, seconds, summary: str | None = None):
        rec["data"].append(dict(what=what, measured_bytes=measured, budget_bytes=budget, seconds=seconds))
        rows.append([what, size(measured), size(budget), fmt(measured / budget if budget else None, ".2f"),
                     fmt(seconds, ".1f")])
        if summary:
            rec["summary"].append([summary, size(measured), f"budget {size(budget)}"])
        rep.log(f"memory: {what}: {size(measured)} (budget {size(budget)})")

    add(f"weights ({rep.args.dtype}), after build + random init", rep.weights_bytes, param_count(cfg) * cb,
        rep.build_seconds, "weights")
    prompt_ids, prompt_mask = rl_prompts(rep)
    n, P, G, bl = len(prompt_ids), prompt_ids.shape[1], S["gen_length"], S["block_length"]
    shape = f"{n} x ({P} + {G}) tokens"

    def rl_budget(gc_on: bool) -> dict:  # as diffu_grpo.main computes it (world 1: no DDP gradient buckets)
        return memory_budget(cfg, 1, r, lora_targets=RL_TARGETS, compute_bytes=cb, micro_batch=mb, seq_len=P + G,
                             logit_rows=2 * G, grad_checkpointing=gc_on, grad_accum=n // mb)

    with lora_applied(model, r, S["lora_alpha"], RL_TARGETS, seed) as params:
        add(f"weights + LoRA r={r} on q/k/v/up (fp32 adapters)", rep.allocated_bytes(), rl_budget(False)["parameters"],
            None)
        for gc_on in (False, True):
            rep.check()
            model.gradient_checkpointing = gc_on
            optimizer = torch.optim.AdamW(params, lr=3e-6, betas=(0.9, 0.99), weight_decay=0.1)
            rep.free()
            # One denoising step per block: a rollout's memory does not depend on the number of steps.
            res = grpo_round(model, optimizer, params, rl_args(rep), prompt_ids, prompt_mask, rep.counter,
                             rep.autocast(), 0, G // bl, 1)
            budget = rl_budget(gc_on)
            if not gc_on:
                add(f"rollout {shape}, block {bl}, exact sampler (budget: weights only; sampling is not in "
                    "memory_budget)", res["generation"]["peak_mib"] * 2**20, budget["parameters"],
                    res["generation"]["seconds"], "rollout peak")
            add(f"estimator forward+backward, {n // mb} micro-batches of {mb} + AdamW step, grad checkpointing "
                f"{'on' if gc_on else 'off'}", res["updates"]["peak_mib"] * 2**20, budget["total"],
                res["updates"]["seconds"], f"estimator fwd+bwd peak, micro-batch {mb}, GC {'on' if gc_on else 'off'}")
            del optimizer, res
        rep.check()
        rep.free()
        opts = types.SimpleNamespace(seed=seed, gen_length=G, block_length=bl, temperature=S["temperature"],
                                     threshold=None)
        with rep.autocast():
            _, sec = timed(lambda: sample_mode(model, [(list(range(n)), prompt_ids, prompt_mask)], "dual", G // bl,
                                               opts), rep.device)
        add(f"rollout {shape}, dual cache (keys/values of every layer kept; budget: weights only)", rep.peak_bytes(),
            rl_budget(False)["parameters"], sec)
    L = S["sft_length"]
    with lora_applied(model, r, S["sft_lora_alpha"], SFT_TARGETS, seed) as params:
        batch = sft_batch(cfg, 1, L, seed, rep.device)
        model.train()
        for gc_on in (True, False):
            rep.check()
            model.gradient_checkpointing = gc_on
            optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)  # the last one's state goes with it
            rep.free()
            _, sec = timed(lambda: sft_iteration(model, optimizer, batch, rep.autocast()), rep.device)
            budget = memory_budget(cfg, 1, r, lora_targets=SFT_TARGETS, compute_bytes=cb, micro_batch=1, seq_len=L,
                                   grad_checkpointing=gc_on)
            add(f"SFT step, 1 x {L} tokens, LoRA r={r} on q/k/v, grad checkpointing {'on' if gc_on else 'off'}",
                rep.peak_bytes(), budget["total"], sec, f"SFT step peak, {L} tokens, GC {'on' if gc_on else 'off'}")


def section_sampler(rep: Report, rec: dict):
    """Tokens/s, model calls and MFU of the sampler modes at the d1 rollout shape of one GPU."""
    model = rep.need_model()
    S = rep.shape
    prompt_ids, prompt_mask = rl_prompts(rep)
    n, P, G, bl = len(prompt_ids), prompt_ids.shape[1], S["gen_length"], S["block_length"]
    batches = [(list(range(n)), prompt_ids, prompt_mask)]
    opts = types.SimpleNamespace(seed=rep.args.seed, gen_length=G, block_length=bl, temperature=S["temperature"],
                                 threshold=0.9)
    modes = ("exact", "prefix", "dual", "threshold")

    def run(mode: str, steps: int) -> torch.Tensor:
        t0 = time.perf_counter()
        with rep.autocast():
            out = sample_mode(model, batches, mode, steps, opts)
        rep.log(f"sampler: {mode}, {steps} steps: {time.perf_counter() - t0:.1f} s")
        return out

    res = {}
    try:
        for mode in modes[:3]:  # warm-up: one step per block (threshold runs the exact mode's kernels)
            run(mode, G // bl)
        interleaved(run, modes, S["steps"], S["sampler_repeats"], rep.counter, rep.device, res, fits=rep.fits)
    finally:  # what finished is reported, also when the time box ends the section
        rows = add_table(rec, f"{n} rows ({S['prompts']} prompts x {S['generations']}, prompts {P} tokens "
                         f"left-padded), gen length {G}, block {bl}, {S['steps']} steps, temperature "
                         f"{S['temperature']}; threshold 0.9 on the plain sampler; MFU: model FLOPs (bench "
                         "docstring) / time / datasheet peak",
                         ["mode", "model calls", "ms/call", "tokens/s", "x vs exact", "MFU (%)",
                          "% of measured matmul", "agreement w/ exact (%)", "peak memory", "repeats"])
        exact = res.get("exact")
        for mode in modes:
            if mode not in res:
                continue
            e = res[mode]
            t = statistics.median(e["times"])
            x = statistics.median(a / b for a, b in zip(exact["times"], e["times"])) if exact else None
            agree = (e["output"] == exact["output"]).float().mean().item() if exact else None
            mfu = e["flops"] / t / rep.args.peak_flops if rep.args.peak_flops else None
            of_mm = e["flops"] / t / rep.matmul_flops if rep.matmul_flops else None
            d = dict(mode=mode, seconds=t, calls=e["calls"], tokens_per_s=n * G / t, speedup_vs_exact=x, mfu=mfu,
                     of_matmul=of_mm, agreement=agree, peak_bytes=e["peak_mib"] * 2**20, repeats=len(e["times"]))
            rec["data"].append(d)
            rows.append([mode, str(e["calls"]), fmt(1e3 * t / max(e["calls"], 1), ".1f"), fmt(n * G / t, ".1f"),
                         fmt(x, ".2f"), pct(mfu), pct(of_mm), pct(agree), size(d["peak_bytes"]), str(len(e["times"]))])
            rec["summary"].append([f"sampler {mode}: tokens/s ({n} rows, {S['steps']} steps)", fmt(n * G / t, ".1f"),
                                   f"MFU {pct(mfu)}%"])
        rec["notes"].append("Random weights: no confidence reaches 0.9, so the threshold mode (the fixed-floor rule: "
                            "max(scheduled k, count above it)) commits the schedule's tokens and makes as many model "
                            "calls as exact. Its gain on a trained model needs `bench.py sampler --model`.")


def section_grpo(rep: Report, rec: dict):
    """One diffu-GRPO round at d1's per-GPU shape, and d1's GSM8K run projected from it."""
    model = rep.need_model()
    S = rep.shape
    prompt_ids, prompt_mask = rl_prompts(rep)
    n, P, G, bl = len(prompt_ids), prompt_ids.shape[1], S["gen_length"], S["block_length"]
    runs = []
    with lora_applied(model, S["lora_r"], S["lora_alpha"], RL_TARGETS, rep.args.seed) as params:
        optimizer = torch.optim.AdamW(params, lr=3e-6, betas=(0.9, 0.99), weight_decay=0.1)
        try:
            t0 = time.perf_counter()
            grpo_round(model, optimizer, params, rl_args(rep), prompt_ids, prompt_mask, rep.counter, rep.autocast(),
                       -1, G // bl, 1)  # warm-up: one denoising step per block, mu = 1
            rep.log(f"grpo: warm-up round {time.perf_counter() - t0:.1f} s")
            for i in range(S["grpo_repeats"]):
                if runs and not rep.fits(sum(ph["seconds"] for ph in runs[-1].values())):
                    break
                runs.append({})
                grpo_round(model, optimizer, params, rl_args(rep), prompt_ids, prompt_mask, rep.counter,
                           rep.autocast(), i, S["steps"], S["mu"], res=runs[-1])
                rep.log("grpo: round " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in runs[-1].items()))
        finally:
            grpo_tables(rep, rec, runs, n, P)


def grpo_tables(rep: Report, rec: dict, runs: list[dict], n: int, P: int):
    S, mu = rep.shape, rep.shape["mu"]
    rows = add_table(rec, f"{S['prompts']} prompts x {S['generations']} = {n} completions of {S['gen_length']} "
                     f"tokens (prompts {P} tokens, left-padded); {S['steps']} steps, block {S['block_length']}, "
                     f"temperature {S['temperature']}; LoRA r={S['lora_r']} alpha {S['lora_alpha']:g} on q/k/v/up, "
                     f"mu={mu}, micro-batch {S['micro_batch']} (grad accumulation {n // S['micro_batch']}), beta 0.04, "
                     f"no grad checkpointing; random rewards",
                     ["phase", "seconds", "% of round", "tokens", "tokens/s", "MFU (%)", "% of measured matmul",
                      "peak memory"])
    phases = [ph for ph in ("generation", "old/ref log-probs", "updates") if any(ph in r for r in runs)]
    med = {ph: statistics.median(r[ph]["seconds"] for r in runs if ph in r) for ph in phases}
    total = sum(med.values()) if len(phases) == 3 else None
    for ph in phases:
        e = next(r[ph] for r in runs if ph in r)
        mfu = e["flops"] / med[ph] / rep.args.peak_flops if rep.args.peak_flops else None
        of_mm = e["flops"] / med[ph] / rep.matmul_flops if rep.matmul_flops else None
        rec["data"].append(dict(phase=ph, seconds=med[ph], flops=e["flops"], tokens=e["tokens"], mfu=mfu,
                                of_matmul=of_mm, peak_bytes=e["peak_mib"] * 2**20))
        rows.append([f"{mu} updates" if ph == "updates" else ph, fmt(med[ph], ".2f"),
                     fmt(100 * med[ph] / total if total else None, ".0f"), str(e["tokens"]),
                     fmt(e["tokens"] / med[ph], ".0f"), pct(mfu), pct(of_mm), size(e["peak_mib"] * 2**20)])
    if total is None:
        rec["notes"].append("The round did not finish: no projection.")
        return
    rows.append(["round", fmt(total, ".2f"), "100", "-", "-", "-", "-", "-"])
    flops = sum(next(r[ph] for r in runs if ph in r)["flops"] for ph in phases)
    R, gpus = D1_GSM8K["rounds"], D1_GSM8K["gpus"]
    hours = R * total / 3600
    limit = R * flops / rep.matmul_flops / 3600 if rep.matmul_flops else None
    rec["data"].append(dict(projection="d1 GSM8K", rounds=R, gpus=gpus, round_seconds=total, hours=hours,
                            round_flops=flops, arithmetic_limit_hours=limit))
    proj = add_table(rec, f"d1's GSM8K run on {gpus} GPUs: {R} rounds ({TASK_STEPS['gsm8k']} optimizer steps / mu "
                     f"{TASK_MU['gsm8k']}), each GPU "
                     "doing the round above. Compute only: reward scoring, the gradient all-reduce, validation and "
                     "checkpoints are not included",
                     ["projection", "hours"])
    proj.append([f"measured: {R} x {total:.3g} s", fmt(hours, ".3g")])
    proj.append([f"arithmetic limit: {R} x {tflops(flops)} TFLOP (model FLOPs per round) at the measured matmul "
                 f"throughput ({tflops(rep.matmul_flops)} TFLOP/s)", fmt(limit, ".3g")])
    rec["summary"].append([f"diffu-GRPO round ({n} completions, mu {mu})", f"{total:.3g} s",
                           " + ".join(f"{ph} {med[ph]:.3g} s" for ph in phases)])
    rec["summary"].append([f"d1 GSM8K on {gpus} GPUs ({R} rounds)", f"{hours:.3g} h",
                           f"arithmetic limit {fmt(limit, '.3g')} h"])


def section_numerics(rep: Report, rec: dict):
    """bf16 (bf16 weights + autocast, the run's path) against fp32 on a mid-size random model: logits,
    estimator log-probs, greedy tokens."""
    S, dev, seed = rep.shape, rep.device, rep.args.seed
    cfg = preset_config(rep.args.arch, rep.tokenizer if rep.args.arch == "tiny" else None, **S["numerics"])
    if rep.args.arch == "tiny" and rep.tokenizer is None:  # the model sections were not run: no tokenizer yet
        cfg = preset_config("tiny", make_char_tokenizer(), **S["numerics"])
    with torch.device("meta"):
        ref, low = LLaDA(cfg), LLaDA(cfg)
    ref = ref.to_empty(device=dev).init_weights(seed).eval()  # fp32
    low.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()}, assign=True)
    low.eval()
    bf16 = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)  # noqa: E731
    rows_n, G, P = S["numerics_rows"], S["numerics_gen"], S["prompt_length"]
    ids, am = left_pad(random_prompts(cfg, rows_n, P, seed), cfg.pad_token_id, dev)
    completion = torch.tensor(random_prompts(cfg, rows_n, G, seed + 1, min_frac=1.0), device=dev)  # (rows, G)
    rows = add_table(rec, f"random model d_model {cfg.d_model}, {cfg.n_layers} layers, vocab {cfg.vocab_size} "
                     f"({ref.num_params() / 1e6:.1f}M parameters); {rows_n} prompts of <= {P} tokens + {G} completion "
                     f"positions; fp32 = fp32 weights, no autocast (float32 matmul precision "
                     f"{torch.get_float32_matmul_precision()!r}); bf16 = bf16 weights + autocast",
                     ["quantity", "max abs error", "mean abs error", "fp32 scale (std)", "agreement (%)"])

    def add(what, err, scale, agree):
        rec["data"].append(dict(what=what, max_abs=err.max().item() if err is not None else None,
                                mean_abs=err.mean().item() if err is not None else None, scale=scale, agreement=agree))
        d = rec["data"][-1]
        rows.append([what, fmt(d["max_abs"], ".4f"), fmt(d["mean_abs"], ".5f"), fmt(scale, ".3f"), pct(agree)])

    with torch.no_grad():
        x = torch.cat([ids, torch.full_like(completion, cfg.mask_token_id)], 1)
        xm = torch.cat([am, torch.ones_like(completion)], 1)
        lf = ref(x, xm, positions=slice(ids.shape[1], None)).float()  # (rows, G, V)
        with bf16():
            lb = low(x, xm, positions=slice(ids.shape[1], None)).float()
        add("logits at the masked completion positions (argmax agreement)", (lb - lf).abs(), lf.std().item(),
            (lb.argmax(-1) == lf.argmax(-1)).float().mean().item())
        del lf, lb
        rep.check()
        gens = lambda: [example_generator(seed, i) for i in range(rows_n)]  # noqa: E731  the same masks for both
        pf = completion_logprobs(ref, ids, am, completion, gens(), 0.15, cfg.mask_token_id)
        with bf16():
            pb = completion_logprobs(low, ids, am, completion, gens(), 0.15, cfg.mask_token_id)
        add("estimator log-probs (completion_logprobs, nats)", (pb - pf).abs(), pf.std().item(), None)
        rep.check()
        kw = dict(steps=G, gen_length=G, block_length=min(G, 32), temperature=0.0)
        tf = generate(ref, ids, am, **kw)[:, -G:]
        with bf16():
            tb = generate(low, ids, am, **kw)[:, -G:]
        same = (tf == tb).float()
        add(f"greedy sampler tokens (exact, {G} steps; rows identical: {same.all(1).float().mean().item():.0%})", None,
            None, same.mean().item())
    rep.check()
    # the estimator's chunk at d1's shape (2 rows x 256 positions) at the 8B head size; the CPU smoke test: small
    positions, V, D = (512, 126464, 4096) if dev.type == "cuda" else (16, 1000, 64)
    head_rows = time_head(dev, positions, repeats=5 if dev.type == "cuda" else 1, warmup=1, seed=seed, V=V, D=D)
    rec["data"].append(dict(what="estimator head at 8B size", positions=positions, rows=head_rows))
    t = add_table(rec, f"the estimator's output head, {V:,} x {D} (LLaDA-8B: 126,464 x 4096), random bf16 weights, "
                  f"{positions} positions per call: fp32 logits (diffu_grpo) vs bf16 logits; bench.py head",
                  ["head", "ms", "x time vs bf16", "max |log-prob error| vs float64"])
    t += [[r["name"], fmt(r["ms"], ".2f"), fmt(r["x"], ".2f"), f"{r['err']:.2e}"] for r in head_rows]
    rec["summary"].append([f"estimator fp32 head vs bf16 head ({positions} positions)",
                           f"{head_rows[-1]['x']:.2f}x the time", f"log-prob error {head_rows[0]['err']:.1e} -> "
                                                                   f"{head_rows[-1]['err']:.1e}"])
    rec["summary"].append(["bf16 vs fp32 logits (mid-size random model)", f"max {rows[0][1]}, mean {rows[0][2]}",
                           f"fp32 std {rows[0][3]}"])
    rec["summary"].append(["bf16 vs fp32 greedy tokens", f"{rows[2][4]}% agree", "-"])
    rec["notes"].append("Random weights give flat output distributions with near-ties, where any rounding can flip "
                        "an argmax: the agreement of a trained model is higher (tests/test_model_8b.py checks the "
                        "bf16 path on a tiny trained model on CPU).")


def section_sdpa(rep: Report, rec: dict):
    """Which scaled_dot_product_attention backend runs with the padding mask (the estimator, padded rollouts) and
    without it (unpadded batches), and each backend's speed at the rollout shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    S, dev = rep.shape, rep.device
    cfg = rep.model.config if rep.model is not None else preset_config(
        rep.args.arch, make_char_tokenizer() if rep.args.arch == "tiny" else None)
    B, H, hd = S["prompts"] * S["generations"], cfg.n_heads, cfg.head_dim
    lengths = torch.randint(3 * S["prompt_length"] // 4, S["prompt_length"] + 1, (B,),
                            generator=torch.Generator().manual_seed(rep.args.seed)).tolist()
    _, am = left_pad([[1] * n for n in lengths], 0, dev)  # (B, P): the padding pattern of a rollout's prompts
    mask = torch.cat([am.bool(), am.new_ones(B, S["gen_length"], dtype=torch.bool)], 1)[:, None, None, :]  # (B,1,1,L)
    L = mask.shape[-1]
    dt = torch.bfloat16 if rep.cuda else rep.dtype
    g = torch.Generator(dev).manual_seed(rep.args.seed)
    q, k, v, dy = (torch.randn(B, H, L, hd, generator=g, device=dev, dtype=dt) for _ in range(4))
    backends = [("default", None)] + [(b.lower(), getattr(SDPBackend, b)) for b in
                                      ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
                                      if hasattr(SDPBackend, b)]
    rows = add_table(rec, f"q, k, v ({B}, {H}, {L}, {hd}) {str(dt).removeprefix('torch.')}; mask: (B, 1, 1, L) bool, "
                     "left padding as in a rollout; ms: mean of 10 after 2 warm-up",
                     ["mask", "backend", "forward ms", "forward+backward ms", "ran as"])
    for masked in (False, True):
        m = mask if masked else None
        for name, backend in backends:
            rep.check()
            with (sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()), \
                    warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # torch says why a backend refuses in warnings
                try:
                    fwd, both, op = sdpa_times(q, k, v, dy, m, dev)
                except RuntimeError as e:  # this backend refuses these inputs: that is the finding
                    why = "; ".join(dict.fromkeys(str(w.message).splitlines()[0] for w in caught)) or \
                        str(e).splitlines()[0]
                    rec["data"].append(dict(mask=masked, backend=name, refused=why))
                    rows.append(["yes" if masked else "no", name, "-", "-", "refused: " + why])
                    continue
            rec["data"].append(dict(mask=masked, backend=name, forward_ms=fwd, forward_backward_ms=both, op=op))
            rows.append(["yes" if masked else "no", name, fmt(fwd, ".3f"), fmt(both, ".3f"), op])
            if name == "default":
                rec["summary"].append([f"SDPA {'with' if masked else 'without'} padding mask: default backend", op,
                                       f"{fwd:.3f} ms forward"])


def sdpa_times(q, k, v, dy, mask, dev) -> tuple[float, float, str]:
    """Forward and forward+backward milliseconds of one SDPA call, and the kernel op that ran (the profiler's
    name of the backend's aten op)."""
    F = torch.nn.functional
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ops = sorted({e.key.removeprefix("aten::") for e in prof.key_averages()
                  if e.key.startswith("aten::_") and ("attention" in e.key or "sdp" in e.key)})
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def both():
        qg.grad = kg.grad = vg.grad = None
        F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask).backward(dy)

    out = []
    for fn in (fwd, both):
        for _ in range(2):
            fn()
        out.append(1e3 * timed(lambda: [fn() for _ in range(10)], dev)[1] / 10)
    return out[0], out[1], ", ".join(ops) or "?"


SECTION_FUNCS = {"device": section_device, "memory": section_memory, "sampler": section_sampler,
                 "grpo": section_grpo, "numerics": section_numerics, "sdpa": section_sdpa}


def run_section(rep: Report, name: str, rest: list[str]):
    """Run one section inside its time box; record ok / timed out / failed (with the error), never raise."""
    box = time_box(rep.end - time.perf_counter(), rest)
    rec = rep.data["sections"][name] = new_section(name)
    rec["time_box_s"] = round(box, 1)
    rep.log(f"{name}: start ({box:.0f} s time box)")
    t0 = time.perf_counter()
    rep.deadline = t0 + box
    if rep.counter is not None:
        rep.counter.deadline = rep.deadline
    try:
        SECTION_FUNCS[name](rep, rec)
        rec["status"] = "ok"
    except TimeBoxExceeded as e:
        rec.update(status="timed out", error=f"{e} ({box:.0f} s)")
    except Exception as e:  # fail soft: a broken section is recorded with its error, the next ones still run
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6))
    finally:
        rep.deadline = math.inf
        if rep.counter is not None:
            rep.counter.deadline = None
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        rep.free()
        rep.write()
    rep.log(f"{name}: {rec['status']} in {rec['seconds']:.1f} s" + (f": {rec['error']}" if "error" in rec else ""))


def report_markdown(data: dict) -> str:
    m = data["meta"]
    cpu = m["device_type"] != "cuda"
    where = f"{m['device_name']}" + (" -- CPU smoke test of the command, NOT a GPU measurement" if cpu else "")
    out = [f"# gpu-report: {where}, {m['date']}", "",
           f"`{m['command']}`: model {m.get('model', '(not built)')} ({m['dtype']}); torch {m['torch']}"
           + (f", CUDA {m['cuda']}" if m["cuda"] else "") + f"; commit {m['commit'] or 'unknown'}; "
           f"{m.get('seconds', '?')} s of a {m['budget_s']:.0f} s budget.", "",
           "Every figure below was measured by this run on this device, except what is marked computed "
           "(train_utils.memory_budget and param_count, the model FLOP counts of bench.forward_flops, the projection's "
           "arithmetic).", "", "## Summary" + (" (CPU)" if cpu else ""), ""]
    summary = [row for rec in data["sections"].values() for row in rec["summary"]]
    failed = [f"{name}: {rec['status']}" for name, rec in data["sections"].items() if rec["status"] != "ok"]
    out.append(table(["figure", "measured", "beside it"], summary or [["(none)", "-", "-"]]))
    if failed:
        out += ["", "Sections not ok: " + "; ".join(failed) + "."]
    for name, rec in data["sections"].items():
        num = SECTIONS.index(name)
        out += ["", f"## {num}. {rec['title']}{' (CPU)' if cpu else ''}: {rec['status']} ({rec.get('seconds', '?')} s "
                f"of a {rec['time_box_s']} s time box)"]
        if "error" in rec:
            out += ["", f"**{rec['status']}**: `{rec['error']}`"]
        for t in rec["tables"]:
            out += [""] + ([t["caption"], ""] if t["caption"] else []) + [table(t["columns"], t["rows"])]
        out += [""] * bool(rec["notes"]) + [f"- {note}" for note in rec["notes"]]
    return "\n".join(out) + "\n"


def gpu_report(args, argv: list[str]) -> list[str]:
    """Run the sections in order, each in its time box; returns the names of those that are not ok."""
    rep = Report(args, argv)
    names = [n for n in SECTIONS if n in args.sections]
    rep.log(f"{rep.data['meta']['device_name']}, preset {args.preset}, {args.budget:.0f} s budget, sections "
            f"{', '.join(names)}; writing {rep.out / 'gpu-report.json'} and .md after each section")
    if any(n in MODEL_SECTIONS for n in names):
        try:
            rep.build_model()
            rep.log(f"built {rep.data['meta']['model']} in {rep.build_seconds:.1f} s")
        except Exception as e:  # fail soft: the sections that need the model say why they could not run
            rep.model_error = rep.data["meta"]["model_error"] = f"{type(e).__name__}: {e}"
            rep.log(f"model build failed: {rep.model_error}")
    for i, name in enumerate(names):
        run_section(rep, name, names[i:])
    rep.write()
    bad = [n for n in names if rep.data["sections"][n]["status"] != "ok"]
    rep.log(f"done in {time.perf_counter() - rep.t0:.0f} s; " + (f"not ok: {', '.join(bad)}" if bad else "all ok")
            + f"; wrote {rep.out / 'gpu-report.md'}")
    return bad


# -----------------------------------------------------------------------------
# Main


def time_head(dev: torch.device, positions: int, repeats: int, warmup: int, seed: int, V: int = 126464,
              D: int = 4096) -> list[dict]:
    """The RL estimator's output head in fp32 (model.OutputHead, fp32=True, as diffu_grpo._token_logprobs runs
    it; on CUDA with TF32 off and on: diffu_grpo.py turns it on for bf16 runs) vs the plain head under bf16
    autocast (bf16 logits), at LLaDA-8B's head size (V x D = 126,464 x 4096) with random bf16 weights,
    log-softmax and gather included. Interleaved repeats; x = the median of per-repeat ratios to the bf16 head. Returns rows
    {name, ms, x, err}: err = max |log-prob - float64 log-prob|."""
    from model import OutputHead
    from diffu_grpo import _token_logprobs
    head = OutputHead(D, V, bias=False, device=dev, dtype=torch.bfloat16).requires_grad_(False)
    g = torch.Generator(dev).manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=g, device=dev) * 0.02)
    h = torch.randn(1, positions, D, generator=g, device=dev).to(torch.bfloat16)
    tokens = torch.randint(0, V, (1, positions), generator=g, device=dev)
    want = torch.log_softmax(h.double() @ head.weight.double().T, -1).gather(-1, tokens[..., None]).squeeze(-1)

    def plain():
        lg = head(h).float()  # bf16 logits under autocast, then cast
        return lg.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(lg, -1)

    def fp32(tf32: bool):
        def run():
            if dev.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = tf32
            return _token_logprobs(lambda x, fp32: head(x, fp32=fp32), h, tokens)
        return run
    runs = {"bf16 logits (plain head under autocast)": plain, "fp32 logits (OutputHead fp32=True)": fp32(False)}
    if dev.type == "cuda":
        runs["fp32 logits, TF32 on (diffu_grpo.py's bf16 runs)"] = fp32(True)
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    times, errs = {k: [] for k in runs}, {}
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            for i in range(warmup + repeats):
                for name, fn in runs.items():
                    out, dt = timed(fn, dev)
                    if i >= warmup:
                        times[name].append(dt)
                    errs[name] = (out.double() - want).abs().max().item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    base = times["bf16 logits (plain head under autocast)"]
    return [dict(name=name, ms=1000 * statistics.median(t), x=statistics.median(b / a for a, b in zip(base, t)),
                 err=errs[name]) for name, t in times.items()]


def bench_head(args):
    rows = time_head(torch.device(args.device), args.positions, args.repeats, args.warmup, args.seed)
    args.dtype = "bfloat16"  # the weights and the autocast of this figure, whatever the preset says
    print(header(args, "head", "LLaDA-8B output head 126464 x 4096, random bf16 weights"))
    print(table(["head", "positions", "ms", "x time vs bf16", "max |log-prob error| vs float64"],
                [[r["name"], str(args.positions), f"{r['ms']:.1f}", f"{r['x']:.2f}", f"{r['err']:.2e}"] for r in rows]))


def header(args, what: str, desc: str) -> str:
    dev = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else \
        f"cpu, {torch.get_num_threads()} thread(s)"
    peak = f", peak {args.peak_flops:.3g} FLOP/s" if args.peak_flops else ""
    return (f"## bench.py {what} --preset {args.preset}: {dev}{peak}, {args.dtype}, torch {torch.__version__}; "
            f"model {desc}; median of {args.repeats} after {args.warmup} warm-up")


def parse_args(argv=None):
    common = ArgumentParser(add_help=False)
    c = common.add_argument
    c("--preset", default="tiny", choices=sorted(PRESETS), help="sizes and model (flags below override them)")
    c("--model", default=None, help="checkpoint folder (HF layout) instead of random weights")
    c("--adapter", default=None, help="LoRA adapter folder to apply to --model")
    c("--layers", type=positive_int, default=None, help="override the preset's n_layers (e.g. 1: smoke-test llada-8b)")
    c("--device", default=None, help="default: the preset's (tiny: cpu, llada-8b: cuda)")
    c("--dtype", default=None, choices=["float32", "bfloat16"], help="default: the preset's")
    c("--repeats", type=positive_int, default=None, help="timed runs per figure (the median is reported)")
    c("--warmup", type=nonneg_int, default=None, help="untimed warm-up runs per figure")
    c("--peak-flops", type=positive_float, default=None,
      help="peak dense bf16 FLOP/s for MFU (default: by GPU name, e.g. H100/H200 989e12; none on a CPU)")
    c("--seed", type=int, default=0, help="random weights, prompts and sampling noise")
    c("--threads", type=positive_int, default=None, help="torch.set_num_threads (CPU)")
    c("--prompt-length", type=positive_int, default=None, help="random prompts: the longest prompt in tokens")
    c("--gen-length", type=positive_int, default=None, help="completion length in tokens")
    c("--block-length", type=positive_int, default=None, help="semi-autoregressive block length")
    c("--steps", type=positive_int, default=None, help="denoising steps")
    c("--threshold", type=probability, default=None, help="confidence threshold of the threshold modes (sampler: 0.9)")
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sampler", parents=[common], help="reference vs exact vs fast sampler modes")
    s.add_argument("--batch", type=positive_int, default=None,
                   help="prompts per sampler call (random prompts: also their number)")
    s.add_argument("--modes", default=",".join(SAMPLER_MODES), help=f"comma-separated subset of {SAMPLER_MODES}")
    s.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy (evaluation); d1 rollouts: 0.9")
    s.add_argument("--prompts", default=None, help="prompt file (text lines or JSONL, see above)")
    s.add_argument("--prefill", default="", help="text after the assistant header, e.g. '<reasoning>'")
    g = sub.add_parser("grpo-step", parents=[common],
                       help="one diffu-GRPO rollout round (diffu_grpo's functions): generation, log-probs, mu updates")
    g.add_argument("--prompts-per-step", type=positive_int, default=None, help="prompts per rollout round")
    g.add_argument("--num-generations", type=positive_int, default=None, help="G: completions per prompt")
    g.add_argument("--gen-batch-size", type=positive_int, default=None, help="completions per sampler call")
    g.add_argument("--micro-batch-size", type=positive_int, default=None, help="completions per forward/backward")
    g.add_argument("--mu", type=positive_int, default=None, help="optimizer steps per rollout round")
    g.add_argument("--lora-r", type=positive_int, default=None, help="LoRA rank")
    g.add_argument("--lora-alpha", type=positive_float, default=None, help="LoRA alpha")
    g.add_argument("--logp-batch-size", type=positive_int, default=None,
                   help="diffu_grpo.py's flag (default: all rows)")
    g.add_argument("--temperature", type=nonneg_float, default=0.9, help="rollout temperature (d1: 0.9)")
    g.add_argument("--cache", default="none", choices=["none", "prefix", "dual"], help="rollout sampler cache")
    g.add_argument("--p-mask-prompt", type=probability, default=0.15, help="the estimator's prompt mask rate")
    g.add_argument("--eps", type=nonneg_float, default=0.5, help="clipping epsilon")
    g.add_argument("--beta", type=nonneg_float, default=0.04, help="KL coefficient (0: no reference pass)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    f = sub.add_parser("sft", parents=[common], help="SFT tokens/s (sft.sft_loss forward + backward + step)")
    f.add_argument("--batch", type=positive_int, default=None, help="sequences per step")
    f.add_argument("--length", type=positive_int, default=None, help="tokens per sequence")
    f.add_argument("--lora-r", type=positive_int, default=None, help="LoRA rank")
    f.add_argument("--lora-alpha", type=positive_float, default=None, help="LoRA alpha")
    f.add_argument("--lora-dropout", type=bounded(float, 0.0, 1.0, hi_open=True), default=0.05,
                   help="dropout on the LoRA input (default: 0.05)")
    f.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    h = sub.add_parser("head", parents=[common], help="the estimator's fp32 output head vs bf16 logits, at 8B size")
    h.add_argument("--positions", type=positive_int, default=64,
                   help="completion positions per call (d1: 2 rows x 256; default: 64)")
    r = sub.add_parser("gpu-report", help="one time-boxed report of the 8B run on one GPU (gpu-report.json + .md)")
    r.add_argument("--preset", default="llada-8b", choices=sorted(REPORT_SHAPES),
                   help="llada-8b: the real architecture with random bf16 weights at d1's per-GPU shapes (1 GPU); "
                        "tiny: a CPU smoke test of the command in seconds")
    r.add_argument("--device", default=None, help="default: the preset's (llada-8b: cuda, tiny: cpu)")
    r.add_argument("--out", default="reports", help="folder for gpu-report.json and gpu-report.md")
    r.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights and autocast dtype (default: the preset's; bfloat16 on a CPU runs the GPU's "
                        "precision path there)")
    r.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    r.add_argument("--budget", type=positive_float, default=420.0,
                   help="total seconds; each section gets its share of the time left when it starts (see "
                        "SECTION_SHARE) and is stopped, recorded as timed out, when it runs past it")
    r.add_argument("--layers", type=positive_int, default=None, help="override the preset's n_layers (a quicker smoke test)")
    r.add_argument("--peak-flops", type=positive_float, default=None,
                   help="datasheet peak dense bf16 FLOP/s for MFU (default: by GPU name; none on a CPU)")
    r.add_argument("--seed", type=int, default=0, help="random weights and prompts")
    r.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.what == "gpu-report":
        args.arch, args.model, args.adapter = preset["arch"], None, None
        args.dtype = args.dtype or preset["dtype"]
        args.device = args.device or preset["device"]
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("gpu-report: no CUDA device here; the CPU smoke test is --device cpu --preset tiny")
        args.sections = args.sections.split(",")
        unknown = set(args.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown gpu-report sections {sorted(unknown)}; choose from {SECTIONS}")
        if args.peak_flops is None and torch.device(args.device).type == "cuda":
            name = torch.cuda.get_device_name(args.device)
            args.peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), None)
        return args
    args.arch = preset["arch"]
    for k in ["device", "dtype", "repeats", "warmup", "prompt_length", "gen_length", "block_length", "steps"]:
        if getattr(args, k) is None:
            setattr(args, k, preset[k])
    per_command = {
        "sampler": dict(batch="batch"),
        "grpo-step": dict(prompts_per_step="prompts_per_step", num_generations="num_generations",
                          gen_batch_size="gen_batch_size", micro_batch_size="micro_batch_size", mu="mu",
                          lora_r="grpo_lora_r", lora_alpha="grpo_lora_alpha"),
        "sft": dict(batch="sft_batch", length="sft_length", lora_r="sft_lora_r", lora_alpha="sft_lora_alpha"),
        "head": {},
    }[args.what]
    for k, key in per_command.items():
        if getattr(args, k) is None:
            setattr(args, k, preset[key])
    if args.what == "sampler" and args.threshold is None:
        args.threshold = 0.9
    resolve_device(p, args)  # a GPU preset on a machine without one: one line, before anything loads
    if args.peak_flops is None and torch.device(args.device).type == "cuda":
        name = torch.cuda.get_device_name(args.device)
        args.peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if args.what in ("sampler", "grpo-step"):
        if args.gen_length % args.block_length or args.steps % (args.gen_length // args.block_length):
            p.error(f"--gen-length {args.gen_length} must be a multiple of --block-length {args.block_length}, and "
                    f"--steps {args.steps} a multiple of the number of blocks")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "gpu-report":
        return 1 if gpu_report(args, argv[1:]) else 0  # the report is written either way
    {"sampler": bench_sampler, "grpo-step": bench_grpo_step, "sft": bench_sft, "head": bench_head}[args.what](args)


if __name__ == "__main__":
    sys.exit(run_cli(main))  # gpu-report's exit status: 1 when a section failed
