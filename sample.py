"""The masked denoising sampler of LLaDA ("low-confidence remasking"), batched, plus a small CLI.

The completion starts as `gen_length` [MASK] tokens after the prompt and is decoded in blocks of
`block_length`, left to right (semi-autoregressive). Each block gets steps/num_blocks denoising steps; each
step runs the model once, proposes a token for every masked position of the block (argmax of the logits,
with Gumbel noise at temperature > 0), and commits the k most confident proposals, k from a fixed schedule.

Exactly the reference algorithm (llada.md), with these implementation choices that do not change outputs:
- the output head runs only on the current block's positions (the 126k-vocab head is the largest activation);
- the Gumbel-max trick is written in log space, argmax(logits - T*log(-log u)), which equals the reference's
  argmax(exp(logits) / (-log u)^T) without overflowing exp(); noise and confidences in float64;
- `generator` may be a list with one torch.Generator per row: a row's samples then do not depend on which
  other rows share its batch (batched == one at a time; N processes == 1 process);
- CPU generators (model.example_generator) may drive sampling on a GPU: each seeds a generator on the GPU
  from its own stream (so a row's samples still depend only on its generator);
- a step whose schedule commits nothing in any row is skipped (it cannot change the state);
- the step loop makes no host-device sync (the block's commit schedule goes to the device once per block,
  commits are written with torch.where, not boolean indexing) and reuses one buffer for classifier-free
  guidance.
Opt-in fast modes (Fast-dLLM's; both change outputs, both OFF by default):
- `threshold` commits every masked position whose confidence exceeds it (at least one per step) and stops a
  block as soon as every row has decoded it (parallel decoding; one sync per step to detect the end of a
  block; rows already done draw no noise, so batched == one at a time holds here too);
- `cache="prefix"`: the first step of each block runs the whole sequence and stores every layer's keys and
  values (model.KVCache); the block's other steps run only the block and the positions after it, attending to
  the stored keys/values of the prompt and finished blocks (stale within the block: an approximation).
  `cache="dual"` also keeps the positions after the block from the block's first step and runs only the
  block. With `threshold` this is Fast-dLLM's recipe. bench.py measures speed and agreement with the exact path.

CLI: python sample.py --model GSAI-ML/LLaDA-8B-Instruct --prompt "What is 7 * 8?" --gen-length 128
     python sample.py --model GSAI-ML/LLaDA-8B-Instruct --prompt "..." --cache dual --threshold 0.9   (fast)
     python sample.py --model tiny --prompt "hi"     (random tiny model: a smoke test of the code path)
"""
from __future__ import annotations

import time

import torch

from cli import (ArgumentParser, HelpFormatter, check_model_arg, check_paths, nonneg_float, positive_int, probability,
                 resolve_device, run_cli)
from model import KVCache

REMASKING = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")


def num_transfer_tokens(masked_count: list[int], steps: int) -> list[list[int]]:
    """Per row, how many tokens each of `steps` steps commits: count // steps each, the remainder spread one
    each over the first steps (the reference schedule)."""
    return [[n // steps + (1 if i < n % steps else 0) for i in range(steps)] for n in masked_count]


def _on_device(g, device: torch.device):
    """g itself, or for a generator on another device (a CPU generator keyed on the example, sampling on a GPU) a
    generator on `device` seeded from g's stream: drawing the float64 noise (rows x block x vocab per step) on the
    CPU and copying it over would cost more than the forward, and torch refuses a CPU generator for GPU draws."""
    if g is None or g.device.type == device.type:
        return g
    return torch.Generator(device).manual_seed(int(torch.randint(2**62, (), generator=g)))


def _row_generators(generator, batch: int, device: torch.device):
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch} rows")
        return [_on_device(g, device) for g in generator]
    return _on_device(generator, device)  # one torch.Generator (or None) for the whole batch


def _rand(shape, gens, device):
    """float64 uniforms of shape (B, ...): per row from its own generator when given a list."""
    if isinstance(gens, list):
        return torch.stack([torch.rand(shape[1:], generator=g, device=device, dtype=torch.float64) for g in gens])
    return torch.rand(shape, generator=gens, device=device, dtype=torch.float64)


def propose(logits: torch.Tensor, temperature: float, remasking: str, gens) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, N, V) -> candidate tokens (B, N) and their confidences (B, N) float64."""
    B, N, V = logits.shape
    # Process rows in chunks so the float64 copy of the logits stays under ~1 GB (96 rows x 32 x 126k at 8B).
    chunk = max(1, 2**27 // (N * V))
    x0s, confs = [], []
    for r in range(0, B, chunk):
        lg = logits[r:r + chunk]
        g = gens[r:r + chunk] if isinstance(gens, list) else gens
        l64 = lg.double() if (temperature > 0 or remasking == "low_confidence") else None
        if temperature > 0:
            u = _rand(l64.shape, g, lg.device)
            x0 = (l64 - temperature * torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max in float64
        else:
            x0 = lg.argmax(-1)
        if remasking == "low_confidence":
            # softmax probability of the candidate under the RAW logits (no noise, no temperature)
            conf = (l64.gather(-1, x0[..., None]).squeeze(-1) - torch.logsumexp(l64, -1)).exp()
        else:
            conf = _rand(x0.shape, g, lg.device)
        x0s.append(x0)
        confs.append(conf)
    return torch.cat(x0s), torch.cat(confs)


def left_pad(rows: list[list[int]], pad_id: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> left-padded ids (B, P) and attention mask (B, P): every completion starts at column P."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(r):] = 1
    return ids.to(device), mask.to(device)


def check_args(prompt, gen_length, block_length, steps, remasking, temperature, cache="none"):
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be a non-empty (batch, length) tensor of token ids, got shape {tuple(prompt.shape)}")
    if gen_length <= 0 or block_length <= 0 or gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps <= 0 or steps % num_blocks != 0:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks "
                         f"(gen_length/block_length = {num_blocks})")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return num_blocks, steps // num_blocks


@torch.no_grad()
def generate(model, prompt: torch.Tensor, attention_mask: torch.Tensor | None = None, steps: int = 128,
             gen_length: int = 128, block_length: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", mask_id: int | None = None, generator=None,
             threshold: float | None = None, cache: str = "none") -> torch.Tensor:
    """Sample completions. prompt (B, P) left-padded ids, attention_mask (B, P) 1 = real token.
    Returns (B, P + gen_length): the prompt followed by the completion (no MASK left).
    Fast modes (approximate, off by default): threshold (parallel decoding), cache "prefix" | "dual"."""
    num_blocks, steps_per_block = check_args(prompt, gen_length, block_length, steps, remasking, temperature, cache)
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    B, P = prompt.shape
    L = P + gen_length
    device = prompt.device
    gens = _row_generators(generator, B, device)
    # Classifier-free guidance runs the conditional rows and, below them, the same rows with the prompt hidden:
    # one (2B, L) buffer whose first half IS the state x (a view), the second half refreshed each step.
    xx = torch.full((2 * B if cfg_scale > 0 else B, L), mask_id, dtype=torch.long, device=device)
    xx[:B, :P] = prompt
    x = xx[:B]
    am = None
    if attention_mask is not None and not bool(attention_mask.all()):  # all-ones = no mask: keeps flash SDPA
        am = torch.cat([attention_mask.bool(), attention_mask.new_ones(B, gen_length, dtype=torch.bool)], dim=1)
        if cfg_scale > 0:
            am = torch.cat([am, am])

    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        end = L if cache == "prefix" else e  # cached steps recompute positions [s, end)
        block = x[:, s:e]  # a view: writing into it writes into x
        counts = (block == mask_id).sum(1).tolist()  # one sync per block
        schedule = num_transfer_tokens(counts, steps_per_block)  # (B, steps_per_block) on the host ...
        k_dev = torch.tensor(schedule, device=device).T  # ... and on the device: (steps_per_block, B)
        kv = None
        step = 0
        while True:
            if threshold is None:
                if step == steps_per_block:
                    break
                kmax = max(row[step] for row in schedule)
                step += 1
                if kmax == 0:
                    continue
            masked = block == mask_id  # (B, bl)
            if threshold is not None:
                active = masked.any(1).tolist()  # one sync per step: the block ends when every row is decoded
                if not any(active):
                    break
            if cfg_scale > 0:
                xx[B:, P:] = x[:, P:]  # unconditional rows: the prompt stays MASK, the completion follows x
            if cache == "none":
                logits = model(xx, am, positions=slice(s, e))  # (B or 2B, bl, V)
            elif kv is None:  # the block's first step: the whole sequence, filling the cache
                kv = KVCache()
                logits = model(xx, am, positions=slice(s, e), kv_cache=kv)
                kv.start = s
            else:
                logits = model(xx[:, s:end], positions=slice(0, e - s), kv_cache=kv)
            if cfg_scale > 0:
                cond, uncond = logits.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            if threshold is not None and not all(active):
                # Rows whose block is done draw no noise, so a row's samples do not depend on its batch-mates.
                rows = [i for i, a in enumerate(active) if a]
                x0_a, conf_a = propose(logits[rows], temperature, remasking,
                                       [gens[i] for i in rows] if isinstance(gens, list) else gens)
                x0 = block.clone()
                conf = torch.full(masked.shape, -torch.inf, dtype=torch.float64, device=device)
                x0[rows], conf[rows] = x0_a, conf_a
            else:
                x0, conf = propose(logits, temperature, remasking, gens)
            conf = conf.masked_fill(~masked, -torch.inf)
            if threshold is None:
                idx = conf.topk(kmax, dim=-1).indices  # (B, kmax)
                rank_ok = torch.arange(kmax, device=device) < k_dev[step - 1][:, None]  # (B, kmax)
                commit = torch.zeros_like(masked).scatter_(1, idx, rank_ok)
            else:
                top1 = torch.zeros_like(masked).scatter_(1, conf.argmax(-1, keepdim=True), True)
                commit = ((conf > threshold) | top1) & masked
            block.copy_(torch.where(commit, x0, block))
    return x.clone() if cfg_scale > 0 else x


# -----------------------------------------------------------------------------
# CLI


def main(argv=None):
    p = ArgumentParser(description="Sample from a LLaDA checkpoint with the masked denoising sampler.",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", default=None,
                   help="checkpoint folder or hub id (default: the --adapter's recorded base, else "
                        "GSAI-ML/LLaDA-8B-Instruct); 'tiny' = a random tiny model (smoke test)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder (PEFT layout) to apply")
    p.add_argument("--prompt", action="append", required=True, help="user message (repeat for a batch)")
    p.add_argument("--prefill", default="", help="text appended after the assistant header, e.g. '<reasoning>'")
    p.add_argument("--gen-length", type=positive_int, default=128, help="completion length in tokens")
    p.add_argument("--block-length", type=positive_int, default=32,
                   help="semi-autoregressive block length (divides --gen-length)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps, a multiple of the number of blocks (default: gen_length / 2)")
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy")
    p.add_argument("--cfg-scale", type=nonneg_float, default=0.0, help="classifier-free guidance scale (0 = off)")
    p.add_argument("--remasking", default="low_confidence", choices=REMASKING,
                   help="which proposals a step commits: the most confident, or random ones")
    p.add_argument("--threshold", type=probability, default=None,
                   help="fast mode: commit all positions above this confidence")
    p.add_argument("--cache", default="none", choices=CACHE_MODES,
                   help="fast mode: approximate KV cache refreshed once per block (prefix, or dual = prefix + suffix)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (temperature > 0)")
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: bfloat16 on a GPU, else float32)")
    args = p.parse_args(argv)
    steps = args.steps if args.steps is not None else args.gen_length // 2
    if args.gen_length % args.block_length:
        p.error(f"--gen-length {args.gen_length}: must be a multiple of --block-length {args.block_length}")
    if steps < 1 or steps % (args.gen_length // args.block_length):
        p.error(f"--steps {steps}: must be a positive multiple of the {args.gen_length // args.block_length} blocks "
                f"(--gen-length {args.gen_length} / --block-length {args.block_length})")
    if args.model not in (None, "tiny"):
        check_model_arg(p, "--model", args.model)
    check_paths(p, "--adapter", args.adapter)
    resolve_device(p, args)

    from model import LLaDA, adapter_base, load_adapter, load_tokenizer, make_char_tokenizer, preset_config
    dtype = getattr(torch, args.dtype)
    if args.model == "tiny":
        tokenizer = make_char_tokenizer()
        model = LLaDA(preset_config("tiny", tokenizer)).init_weights(args.seed).to(args.device, dtype)
    else:
        base = adapter_base(args.adapter, args.model) if args.adapter else args.model or "GSAI-ML/LLaDA-8B-Instruct"
        tokenizer = load_tokenizer(base)
        model = LLaDA.from_pretrained(base, dtype=dtype, device=args.device)
    if args.adapter:
        load_adapter(model, args.adapter)
    model.eval()

    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False) + args.prefill
             for q in args.prompt]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].to(args.device), enc["attention_mask"].to(args.device)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    t0 = time.time()
    out = generate(model, ids, mask, steps=steps, gen_length=args.gen_length, block_length=args.block_length,
                   temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
                   generator=gen, threshold=args.threshold, cache=args.cache)
    dt = time.time() - t0
    for q, row in zip(args.prompt, out[:, ids.shape[1]:]):
        print(f"### {q}\n{tokenizer.decode(row, skip_special_tokens=True)}\n")
    print(f"({out.shape[0]} x {args.gen_length} tokens in {dt:.2f}s, {out.shape[0] * args.gen_length / dt:.1f} tok/s)")


if __name__ == "__main__":
    run_cli(main)
