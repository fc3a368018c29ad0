"""Benchmarks: the sampler (reference vs exact vs fast modes), one diffu-GRPO outer step, SFT throughput.
One command per measurement; each prints a markdown table.

  python bench.py sampler   --preset tiny      (CPU, seconds: random tiny model, character tokenizer)
  python bench.py grpo-step --preset tiny
  python bench.py sft       --preset tiny
  python bench.py sampler   --preset llada-8b  (1 GPU: the real architecture with random bf16 weights, built
  python bench.py grpo-step --preset llada-8b   directly on the GPU; d1's rollout: 96 completions x 256 tokens,
  python bench.py sft       --preset llada-8b   128 steps, block 32; LoRA r=128, mu=12; SFT at 4096 tokens)
  python bench.py sampler --model CKPT --prompts FILE   (a trained checkpoint: agreement + accuracy per mode)

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
threshold modes commit one token per step there: their speed needs a trained model (--model).
--prompts FILE: one user message per line, or JSONL rows {"prompt": ...} with "answer" (accuracy = exact match
of the completion text) or "task" + "target" (accuracy = rewards.eval_score), chat-templated like eval.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from diffu_grpo import completion_logprobs, completion_mask, group_advantages, grpo_loss
from model import (LLaDA, apply_lora, example_generator, load_adapter, load_tokenizer, lora_disabled,
                   make_char_tokenizer, preset_config)
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


class CallCounter:
    """Counts the model's forward calls and their FLOPs (a forward pre-hook: it sees every call that goes through
    LLaDA.forward, as the sampler, the reference and completion_logprobs do)."""

    def __init__(self, model: LLaDA):
        self.cfg, self.calls, self.flops = model.config, 0, 0
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def reset(self):
        self.calls, self.flops = 0, 0

    def hook(self, module, args, kwargs):
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
        outs = []
        for idx, ids, am in batches:
            if mode == "reference":
                g = torch.Generator(device).manual_seed(args.seed * 100003 + idx[0])  # its noise is not keyed per row
                out = reference_generate(model, ids, steps, G, bl, T, generator=g, attention_mask=am)
            else:
                cache, threshold, rule = parse_mode(mode, args.threshold)
                gens = [torch.Generator(device).manual_seed(args.seed * 100003 + i) for i in idx]  # one per row
                out = generate(model, ids, am, steps=steps, gen_length=G, block_length=bl, temperature=T,
                               generator=gens, threshold=threshold, cache=cache, threshold_rule=rule)
            outs.append(out[:, -G:])
        return torch.cat(outs)

    for _ in range(args.warmup):
        for mode in modes:
            run(mode, G // bl)
    # With one CPU thread the figures are the process's CPU time: other jobs on shared cores inflate wall time,
    # not CPU time. Otherwise (GPU, several threads) wall time.
    cpu_clock = torch.device(device).type == "cpu" and torch.get_num_threads() == 1
    clock = time.process_time if cpu_clock else time.perf_counter
    times = {m: [] for m in modes}
    calls, flops, peak, outputs = {}, {}, {}, {}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:  # alternate the order: no mode always runs first
            counter.reset()
            reset_peak(device)
            sync(device)
            t0 = clock()
            outputs[mode] = run(mode, args.steps)
            sync(device)
            times[mode].append(clock() - t0)
            calls[mode], flops[mode], peak[mode] = counter.calls, counter.flops, peak_mib(device)

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
# One diffu-GRPO outer step


def bench_grpo_step(args):
    model, _, desc = build(args)
    cfg, device = model.config, args.device
    apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, ["q_proj", "k_proj", "v_proj", "up_proj"],
               seed=args.seed)
    model.gradient_checkpointing = args.grad_checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-6, betas=(0.9, 0.99), weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=getattr(torch, args.dtype)) if torch.device(device).type == "cuda" \
        else contextlib.nullcontext()
    Gn, n = args.num_generations, args.prompts_per_step * args.num_generations
    prompts = [p for p in random_prompts(cfg, args.prompts_per_step, args.prompt_length, args.seed) for _ in range(Gn)]
    prompt_ids, prompt_mask = left_pad(prompts, cfg.pad_token_id, device)
    P, mask_id = prompt_ids.shape[1], cfg.mask_token_id
    mbs = [list(range(r, min(n, r + args.micro_batch_size))) for r in range(0, n, args.micro_batch_size)]
    counter = CallCounter(model)

    def step(s: int, steps: int, mu: int) -> dict:
        """One outer step as diffu_grpo.main runs it (random rewards: the bench has no task). Returns the
        seconds and FLOPs of its three phases."""
        res = {}
        # 1. rollouts
        model.eval()
        counter.reset()
        sync(device)
        t0 = time.perf_counter()
        completions = []
        for r in range(0, n, args.gen_batch_size):
            gens = [example_generator(args.seed, 1, s, g) for g in range(r, min(n, r + args.gen_batch_size))]
            with autocast:
                out = generate(model, prompt_ids[r:r + args.gen_batch_size], prompt_mask[r:r + args.gen_batch_size],
                               steps=steps, gen_length=args.gen_length, block_length=args.block_length,
                               temperature=args.temperature, generator=gens, threshold=args.threshold,
                               cache=args.cache)
            completions.append(out[:, P:])
        completion_ids = torch.cat(completions)
        sync(device)
        res["generation"] = (time.perf_counter() - t0, counter.flops, n * args.gen_length)
        rewards = torch.rand(n, generator=example_generator(args.seed, 3, s))
        advantages = group_advantages(rewards, Gn).to(device)
        cmask = completion_mask(completion_ids, cfg.eos_token_id)
        normalizer = cmask.sum().item()
        seeds = torch.randint(0, 2**62, (mu,), generator=example_generator(args.seed, 2, s)).tolist()

        def est(k, rows):
            return completion_logprobs(model, prompt_ids[rows], prompt_mask[rows], completion_ids[rows],
                                       [example_generator(seeds[k], i) for i in rows], args.p_mask_prompt, mask_id)

        # 2. old-policy and reference log-probs for all mu masks, no grad
        counter.reset()
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            old_logp = torch.stack([torch.cat([est(k, rows) for rows in mbs]) for k in range(mu)]) if mu > 1 else None
            with lora_disabled(model):
                ref_logp = torch.stack([torch.cat([est(k, rows) for rows in mbs]) for k in range(mu)])
        sync(device)
        passes = 2 if mu > 1 else 1
        res["old/ref log-probs"] = (time.perf_counter() - t0, counter.flops, passes * mu * n * (P + args.gen_length))
        # 3. mu optimizer steps
        counter.reset()
        t0 = time.perf_counter()
        model.train()
        for k in range(mu):
            for rows in mbs:
                with autocast:
                    logp = est(k, rows)
                old = logp.detach() if old_logp is None else old_logp[k, rows]
                loss, _ = grpo_loss(logp, old, ref_logp[k, rows], advantages[rows], cmask[rows], args.eps, args.beta,
                                    normalizer)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.2)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        res[f"{mu} updates"] = (time.perf_counter() - t0, 3 * counter.flops, mu * n * (P + args.gen_length))
        return res

    for _ in range(args.warmup):
        step(-1, args.gen_length // args.block_length, 1)
    reset_peak(device)
    runs = [step(i, args.steps, args.mu) for i in range(args.repeats)]
    peak = peak_mib(device)
    phases = list(runs[0])
    med = {ph: statistics.median(r[ph][0] for r in runs) for ph in phases}
    total = statistics.median(sum(r[ph][0] for ph in phases) for r in runs)
    out_rows = []
    for ph in phases:
        _, fl, tokens = runs[0][ph]
        mfu = fl / med[ph] / args.peak_flops if args.peak_flops else None
        out_rows.append([ph, fmt(med[ph], ".3f"), fmt(100 * med[ph] / total, ".0f"), str(tokens),
                         fmt(tokens / med[ph], ".0f"), fmt(None if mfu is None else 100 * mfu, ".1f")])
    out_rows.append(["outer step", fmt(total, ".3f"), "100", "-", "-", "-"])
    print(header(args, "grpo-step", desc) + f"\n{args.prompts_per_step} prompts x {Gn} = {n} completions of "
          f"{args.gen_length} tokens (prompts {max(1, 3 * args.prompt_length // 4)}-{args.prompt_length} tokens); "
          f"sampler: {args.steps} steps, block {args.block_length}, temperature {args.temperature}, cache "
          f"{args.cache}, threshold {args.threshold}, {args.gen_batch_size} per call; LoRA r={args.lora_r} on "
          f"q/k/v/up, mu={args.mu}, micro-batch {args.micro_batch_size}, beta {args.beta}; random rewards; "
          f"peak memory {peak:.0f} MiB. tokens: generation = completion tokens; log-probs and updates = tokens "
          f"forwarded (prompt + completion, per mask and policy)\n")
    print(table(["phase", "seconds", "% of step", "tokens", "tokens/s", "MFU (%)"], out_rows))


# -----------------------------------------------------------------------------
# SFT


def bench_sft(args):
    from sft import sft_loss
    model, _, desc = build(args)
    cfg, device = model.config, args.device
    apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, ["q_proj", "k_proj", "v_proj"], seed=args.seed)
    model.gradient_checkpointing = args.grad_checkpointing
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=getattr(torch, args.dtype)) if torch.device(device).type == "cuda" \
        else contextlib.nullcontext()
    B, L = args.batch, args.length
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.tensor(random_prompts(cfg, B, L, args.seed, min_frac=1.0)).to(device)  # (B, L)
    answer_mask = (torch.arange(L) >= L // 8).expand(B, L).to(device)  # the first 1/8 is prompt (never masked)
    t = torch.rand(B, generator=g).to(device)
    u = torch.rand(B, L, generator=g).to(device)
    p = 1e-3 + (1 - 1e-3) * t
    masked = int((answer_mask & (u < p[:, None])).sum())  # the output head runs on these positions only
    flops = 3 * forward_flops(cfg, B, L, L, masked)

    def it():
        with autocast:
            loss = sft_loss(model, ids, answer_mask, t, u, cfg.mask_token_id)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        it()
    reset_peak(device)
    ts = [timed(it, device)[1] for _ in range(args.repeats)]
    dt = statistics.median(ts)
    mfu = flops / dt / args.peak_flops if args.peak_flops else None
    print(header(args, "sft", desc) + f"\nsft.sft_loss + backward + AdamW step; batch {B} x {L} random tokens "
          f"(1/8 prompt), LoRA r={args.lora_r} on q/k/v, grad checkpointing {args.grad_checkpointing}\n")
    print(table(["what", "ms/iter", "tokens/s", "peak MiB", "MFU (%)"],
                [["fwd+bwd+step", fmt(1e3 * dt, ".1f"), fmt(B * L / dt, ".0f"), fmt(peak_mib(device), ".0f"),
                  fmt(None if mfu is None else 100 * mfu, ".1f")]]))


# -----------------------------------------------------------------------------
# Main


def header(args, what: str, desc: str) -> str:
    dev = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else \
        f"cpu, {torch.get_num_threads()} thread(s)"
    peak = f", peak {args.peak_flops:.3g} FLOP/s" if args.peak_flops else ""
    return (f"## bench.py {what} --preset {args.preset}: {dev}{peak}, {args.dtype}, torch {torch.__version__}; "
            f"model {desc}; median of {args.repeats} after {args.warmup} warm-up")


def parse_args(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    c = common.add_argument
    c("--preset", default="tiny", choices=sorted(PRESETS), help="sizes and model (flags below override them)")
    c("--model", default=None, help="checkpoint folder (HF layout) instead of random weights")
    c("--adapter", default=None, help="LoRA adapter folder to apply to --model")
    c("--layers", type=int, default=None, help="override the preset's n_layers (e.g. 1: smoke-test llada-8b)")
    c("--device", default=None, help="default: the preset's (tiny: cpu, llada-8b: cuda)")
    c("--dtype", default=None, choices=["float32", "bfloat16"], help="default: the preset's")
    c("--repeats", type=int, default=None, help="timed runs per figure (the median is reported)")
    c("--warmup", type=int, default=None, help="untimed warm-up runs per figure")
    c("--peak-flops", type=float, default=None,
      help="peak dense bf16 FLOP/s for MFU (default: by GPU name, e.g. H100/H200 989e12; none on a CPU)")
    c("--seed", type=int, default=0)
    c("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    c("--prompt-length", type=int, default=None, help="random prompts: the longest prompt in tokens")
    c("--gen-length", type=int, default=None)
    c("--block-length", type=int, default=None)
    c("--steps", type=int, default=None, help="denoising steps")
    c("--threshold", type=float, default=None, help="confidence threshold of the threshold modes (sampler: 0.9)")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sampler", parents=[common], help="reference vs exact vs fast sampler modes")
    s.add_argument("--batch", type=int, default=None, help="prompts per sampler call (random prompts: also their number)")
    s.add_argument("--modes", default=",".join(SAMPLER_MODES), help=f"comma-separated subset of {SAMPLER_MODES}")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (evaluation); d1 rollouts: 0.9")
    s.add_argument("--prompts", default=None, help="prompt file (text lines or JSONL, see above)")
    s.add_argument("--prefill", default="", help="text after the assistant header, e.g. '<reasoning>'")
    g = sub.add_parser("grpo-step", parents=[common], help="one diffu-GRPO outer step: generation, log-probs, updates")
    g.add_argument("--prompts-per-step", type=int, default=None)
    g.add_argument("--num-generations", type=int, default=None)
    g.add_argument("--gen-batch-size", type=int, default=None)
    g.add_argument("--micro-batch-size", type=int, default=None)
    g.add_argument("--mu", type=int, default=None)
    g.add_argument("--lora-r", type=int, default=None)
    g.add_argument("--lora-alpha", type=float, default=None)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--temperature", type=float, default=0.9)
    g.add_argument("--cache", default="none", choices=["none", "prefix", "dual"], help="rollout sampler cache")
    g.add_argument("--p-mask-prompt", type=float, default=0.15)
    g.add_argument("--eps", type=float, default=0.5)
    g.add_argument("--beta", type=float, default=0.04)
    g.add_argument("--grad-checkpointing", action="store_true")
    f = sub.add_parser("sft", parents=[common], help="SFT tokens/s (sft.sft_loss forward + backward + step)")
    f.add_argument("--batch", type=int, default=None)
    f.add_argument("--length", type=int, default=None, help="tokens per sequence")
    f.add_argument("--lora-r", type=int, default=None)
    f.add_argument("--lora-alpha", type=float, default=None)
    f.add_argument("--lora-dropout", type=float, default=0.05)
    f.add_argument("--grad-checkpointing", action="store_true")
    args = p.parse_args(argv)

    preset = PRESETS[args.preset]
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
    }[args.what]
    for k, key in per_command.items():
        if getattr(args, k) is None:
            setattr(args, k, preset[key])
    if args.what == "sampler" and args.threshold is None:
        args.threshold = 0.9
    if args.peak_flops is None and torch.device(args.device).type == "cuda":
        name = torch.cuda.get_device_name(args.device)
        args.peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if args.what in ("sampler", "grpo-step"):
        if args.gen_length % args.block_length or args.steps % (args.gen_length // args.block_length):
            raise ValueError(f"gen length {args.gen_length} must be a multiple of block {args.block_length}, and "
                             f"steps {args.steps} a multiple of the number of blocks")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"sampler": bench_sampler, "grpo-step": bench_grpo_step, "sft": bench_sft}[args.what](args)


if __name__ == "__main__":
    main()
