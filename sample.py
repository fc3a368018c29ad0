"""The masked denoising sampler of LLaDA ("low-confidence remasking"), batched, plus a small CLI.

The completion starts as `gen_length` [MASK] tokens after the prompt and is decoded in blocks of
`block_length`, left to right (semi-autoregressive). Each block gets steps/num_blocks denoising steps; each
step runs the model once, proposes a token for every masked position of the block (the argmax of the logits,
or at temperature T > 0 a draw from softmax(logits / T)), and commits the k most confident proposals, k from a
fixed schedule (confidence = the softmax probability of the proposal under the raw logits).

Exactly the reference algorithm (llada.md; tests/reference_sampler.py), with these implementation choices:
- the last transformer block (queries, attention output, MLP; keys and values from every position) and the
  output head run only on the current block, the proposal and the confidence only on its positions still
  masked (the 126k-vocab head is the largest activation; a committed position needs no proposal);
- RoPE cos/sin are computed once per generate (model.rope) and passed to every forward;
- the draw at T > 0 is the reference's Gumbel-max trick, written in log space: argmax(l - T log(-log u)) =
  argmax(exp(l) / (-log u)^T) without overflowing exp(), u uniform, in float64 and in place (no float64 copy of
  the logits);
- `generator` may be a list with one torch.Generator per row: row i's noise for a step is ONE call on its own
  generator for its own masked positions (rows with nothing masked draw nothing), so a row's samples do not
  depend on which other rows share its batch (batched == one at a time; N processes == 1 process). A single
  generator draws the whole step in one call. CPU generators (model.example_generator) may drive sampling on a
  GPU: each seeds a generator on the GPU from its own stream (a row's samples still depend only on its generator);
- `remasking="random"`: confidence 1 - u, one more uniform per position;
- a step whose schedule commits nothing in any row is skipped (it cannot change the state);
- the step loop makes one host-device sync, for the masked counts per row (they size the per-row noise draws
  and the gather of the masked positions); the block's schedule goes to the device once per block, commits
  are written with torch.where, classifier-free guidance reuses one buffer.
Numerics (float64 vs fp32; previous version: float64 Gumbel noise for every block position, float64
probabilities from a float64 copy of the logits):
- the draw: float64, the same expression as before (the Gumbel-max trick degrades in low precision); same law,
  another random stream (noise for the masked positions only): sampled completions differ from the previous
  version's for the same seed. Two alternatives were measured and left: Exp(1) draws with one log per element
  (torch's CPU exponential_ is 4x slower than rand, 2.3x slower than rand and two logs), and an inverse-CDF draw
  with one uniform per position (its choice moves with a last-bit change of the logits anywhere in the cumulative
  sum, ~10-20x more often than Gumbel-max's, enough to break batched == one at a time, whose logits differ in the
  last bit through padding);
- the confidence: fp32 element-wise work (one exp and one sum per vocabulary entry of the fp32 logits, where the
  previous version made a float64 copy), ranked as a LOG-probability -log1p(r), with r the sum over the other
  tokens v of exp(l_v - l_proposal): summed WITHOUT the proposal's own term, so r keeps fp32's relative precision
  however small it is, and the log of the per-position sum taken in float64. The reference ranks the float64
  probabilities 1 / (1 + r); the orders agree except where two positions' r agree to ~1e-7 relative, the
  rounding of the fp32 logits themselves (bf16 logits are far coarser), where neither order means anything.
  Plain fp32 probabilities would not do: 1 / (1 + r) rounds to 1.0 for every r < 6e-8, tying most positions of a
  confident model (float64 ties only below r = 1e-16; there the reference's order is its top-k tie-break, ours
  follows r). Greedy completions are token for token the reference's and the previous version's (tests; also
  random models with 2k-126k vocabularies, whose near-uniform confidences are the hardest case).
Opt-in fast modes (Fast-dLLM's; both change outputs, both OFF by default):
- `threshold` (parallel decoding): each step also commits every masked position whose confidence exceeds
  it. threshold_rule="fixed-floor" (default) commits max(scheduled k, count above threshold) per row, so it
  never makes more model calls than the fixed schedule; "any" is Fast-dLLM's rule: every position above the
  threshold, at least one per step, until the block is decoded (on a model with low confidences that can
  take more calls than the schedule). Both stop a block as soon as every row has decoded it;
- `cache="prefix"`: the first step of each block runs the whole sequence and stores every layer's keys and
  values (model.KVCache); the block's other steps run only the block and the positions after it, attending to
  the stored keys/values of the prompt and finished blocks (stale within the block: an approximation).
  `cache="dual"` also keeps the positions after the block from the block's first step and runs only the
  block. With `threshold` this is Fast-dLLM's recipe. bench.py measures speed and agreement with the exact path.
  `cache_refresh=k` (a middle ground) refills the cache every k model calls of a block instead of once per
  block: calls 0, k, 2k, ... run the whole sequence, the others run the cached window. k = 1 is the exact
  sampler (every call a full forward, token for token); runs/cached_rollouts.py measures it inside RL.

CLI: python sample.py --model GSAI-ML/LLaDA-8B-Instruct --prompt "What is 7 * 8?" --gen-length 128
     python sample.py --model GSAI-ML/LLaDA-8B-Instruct --prompt "..." --cache dual --threshold 0.9   (fast)
     python sample.py --model tiny --prompt "hi"     (random tiny model: a smoke test of the code path)
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cli import (ArgumentParser, HelpFormatter, check_model_arg, check_paths, nonneg_float, positive_int, probability,
                 resolve_device, run_cli)
from model import KVCache

REMASKING = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")
THRESHOLD_RULES = ("fixed-floor", "any")
# Masked positions are proposed in groups of batch rows whose float64 noise stays under this many elements
# (~1 GB; all masked positions of 96 rows x block 32 x 126k vocabulary would be 3 GB).
CHUNK_ELEMENTS = 2**27


def num_transfer_tokens(masked_count: list[int], steps: int) -> list[list[int]]:
    """Per row, how many tokens each of `steps` steps commits: count // steps each, the remainder spread one
    each over the first steps (the reference schedule)."""
    return [[n // steps + (1 if i < n % steps else 0) for i in range(steps)] for n in masked_count]


def _on_device(g, device: torch.device):
    """g itself, or for a generator on another device (a CPU generator keyed on the example, sampling on a GPU) a
    generator on `device` seeded from g's stream: drawing the float64 noise (positions x vocab per step) on the
    CPU and copying it over would cost more than the forward, and torch refuses a CPU generator for GPU draws."""
    if g is None or g.device.type == device.type:
        return g
    return torch.Generator(device).manual_seed(int(torch.randint(2**62, (), generator=g)))


def row_generators(generator, batch: int, device: torch.device):
    """A list with one generator per row (keyed draws), or one generator (or None) for the whole batch."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch} rows")
        return [_on_device(g, device) for g in generator]
    return _on_device(generator, device)


def uniforms(gens, counts: list[int], width: int, device) -> torch.Tensor:
    """float64 uniforms in [0, 1), `width` per masked position, rows one after another: (sum(counts), width). With
    a list of generators row i's counts[i] positions come from gens[i] in one call (nothing for a row without
    masked positions), so a row's noise does not depend on its batch-mates; one call with a single generator."""
    out = torch.empty(sum(counts), width, dtype=torch.float64, device=device)
    if not isinstance(gens, list):
        return out.uniform_(generator=gens)
    a = 0
    for g, c in zip(gens, counts):
        if c:
            out[a:a + c].uniform_(generator=g)  # contiguous rows: the values torch.rand((c, width)) would get
            a += c
    return out


def row_chunks(counts: list[int], width: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [r0, r1) whose sum(counts) * width stays under CHUNK_ELEMENTS (one row at least)."""
    chunks, r0, size = [], 0, 0
    for r, c in enumerate(counts):
        if r > r0 and (size + c) * width > CHUNK_ELEMENTS:
            chunks.append((r0, r))
            r0, size = r, 0
        size += c
    return chunks + [(r0, len(counts))]


def propose(logits: torch.Tensor, temperature: float,
            noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (n, V) of n masked positions -> candidate tokens (n,) and their log-confidence (n,) float64,
    log softmax(logits)[candidate] under the RAW logits (no temperature), from fp32 sums (see the file docstring).
    temperature 0: the argmax. temperature > 0: the Gumbel-max draw argmax(l - T log(-log u)) in float64 with the
    uniforms u = noise (n, V) (overwritten): the reference's argmax(exp(l) / (-log u)^T) in log space, with no
    exp() to overflow."""
    lf = logits.float()  # (n, V)
    lmax, x0 = lf.max(-1)  # (n,): the first maximal index, like argmax
    if temperature > 0:
        x0 = noise.log_().neg_().log_().mul_(-temperature).add_(lf).argmax(-1)  # in place, float64
    # r = sum over v != x0 of exp(l_v - l_x0) = exp(lmax - l_x0) * s: s summed in fp32 WITHOUT the proposal's own
    # term (a tiny r keeps its relative precision; 1 + r would round to 1), then log r and the log-confidence
    # -log(1 + r) in float64 on the (n,) sums, so no rounding of log r (~12 for a flat 126k vocabulary) is added.
    e = (lf - lmax[:, None]).exp_().scatter_(-1, x0[:, None], 0.0)  # (n, V) fp32 in [0, 1]
    log_r = e.sum(-1).double().log_()  # (n,) float64
    if temperature > 0:  # x0 is not always the argmax: add lmax - l_x0 (exact in float64)
        log_r += lmax.double() - lf.gather(-1, x0[:, None]).squeeze(1).double()
    return x0, -F.softplus(log_r)  # log(1 / (1 + r)), accurate for tiny r


def propose_rows(logits: torch.Tensor, counts: list[int], temperature: float, remasking: str,
                 gens) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (n, V) of the masked positions of consecutive rows, counts[i] of row i -> propose()'s proposals (n,)
    and log-confidences (n,) float64, with each row's noise from its own generator, in chunks of rows whose noise
    stays under CHUNK_ELEMENTS."""
    V = logits.shape[1]
    # Uniforms per position: V for the Gumbel-max proposal at T > 0, 1 for the confidence of random remasking.
    width = (V if temperature > 0 else 0) + (remasking == "random")
    x0s, confs, a = [], [], 0
    for r0, r1 in row_chunks(counts, max(width, V)):
        z = a + sum(counts[r0:r1])  # the positions of rows [r0, r1) are logits[a:z]
        noise = uniforms(gens[r0:r1] if isinstance(gens, list) else gens, counts[r0:r1], width,
                         logits.device) if width else None  # (z - a, width)
        x0, conf = propose(logits[a:z], temperature, noise[:, :V] if temperature > 0 else None)
        x0s.append(x0)
        # random remasking: log(1 - u), the log of a uniform confidence in (0, 1] (finite, unlike log u at u = 0)
        confs.append(torch.log1p(-noise[:, -1]) if remasking == "random" else conf)
        a = z
    return (x0s[0], confs[0]) if len(x0s) == 1 else (torch.cat(x0s), torch.cat(confs))


def commit_mask(score: torch.Tensor, k: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """score (B, N) (-inf where not masked), k (B,) -> bool (B, N): each row's k highest-scoring masked positions
    (ties: the lower index first)."""
    order = score.argsort(dim=1, descending=True, stable=True)  # (B, N)
    rank_ok = torch.arange(score.shape[1], device=score.device) < k[:, None]  # (B, N): rank r is taken if r < k
    return torch.zeros_like(masked).scatter_(1, order, rank_ok) & masked


def left_pad(rows: list[list[int]], pad_id: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> left-padded ids (B, P) and attention mask (B, P): every completion starts at column P."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(r):] = 1
    return ids.to(device), mask.to(device)


def check_args(prompt, gen_length, block_length, steps, remasking, temperature, cache="none", threshold=None,
               threshold_rule="fixed-floor", cache_refresh=None):
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if cache_refresh is not None and (cache == "none" or isinstance(cache_refresh, bool)
                                      or not isinstance(cache_refresh, int) or cache_refresh < 1):
        raise ValueError(f"cache_refresh must be a positive int used with cache 'prefix' or 'dual', got "
                         f"{cache_refresh!r} with cache {cache!r}")
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
    if threshold is not None and threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {threshold_rule!r}")
    return num_blocks, steps // num_blocks


def block_hidden(model, xx, am, rope, s: int, e: int, end: int, cache: str, kv, refill: bool):
    """One model call of a block decoding [s, e) of the state xx (rows, L): the final hidden states of the block
    (rows, e - s, D), the KV cache to use next (fast modes), and how many sequence positions the call ran.
    cache "none": the whole sequence. Fast modes: refill = run the whole sequence and fill a new cache; otherwise
    run [s, end) against the cached keys/values (end = e for "dual", L for "prefix")."""
    if cache == "none":
        return model(xx, am, positions=slice(s, e), return_hidden=True, rope=rope), kv, xx.shape[1]
    if refill:
        kv = KVCache()
        h = model(xx, am, positions=slice(s, e), return_hidden=True, kv_cache=kv, rope=rope)
        kv.start = s
        return h, kv, xx.shape[1]
    return model(xx[:, s:end], positions=slice(0, e - s), return_hidden=True, kv_cache=kv), kv, end - s


def commit_counts(schedule: torch.Tensor, step: int, score: torch.Tensor, log_threshold: float | None,
                  threshold_rule: str) -> torch.Tensor:
    """Tokens each row commits at `step` (B,): the schedule's k (schedule (steps_per_block, B)), or with a threshold
    max(floor, the count of log-confidences above it), floor = the schedule's k ("fixed-floor": never more calls
    than the schedule) or 1 ("any", Fast-dLLM's rule, whose steps may outnumber the schedule's)."""
    if log_threshold is None:
        return schedule[step]
    floor = schedule[step] if threshold_rule == "fixed-floor" else torch.ones_like(schedule[0])
    return torch.maximum(floor, (score > log_threshold).sum(1))


@torch.no_grad()
def generate(model, prompt: torch.Tensor, attention_mask: torch.Tensor | None = None, steps: int = 128,
             gen_length: int = 128, block_length: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", mask_id: int | None = None, generator=None,
             threshold: float | None = None, cache: str = "none", threshold_rule: str = "fixed-floor",
             cache_refresh: int | None = None, stats: dict | None = None) -> torch.Tensor:
    """Sample completions. prompt (B, P) left-padded ids, attention_mask (B, P) 1 = real token.
    Returns (B, P + gen_length): the prompt followed by the completion (no MASK left, unless the model proposes
    the [MASK] token itself: committing it leaves the position masked, as in the reference).
    Fast modes (approximate, off by default): threshold (parallel decoding, see threshold_rule), cache "prefix" |
    "dual", refilled every cache_refresh model calls of a block (None: once per block).
    stats: a dict to which the cost is added: "calls" (model calls) and "positions" (rows x sequence positions
    those calls ran: a cached call runs fewer)."""
    num_blocks, steps_per_block = check_args(prompt, gen_length, block_length, steps, remasking, temperature, cache,
                                             threshold, threshold_rule, cache_refresh)
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    B, P = prompt.shape
    L = P + gen_length
    device = prompt.device
    gens = row_generators(generator, B, device)
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
    rope = model.rope(xx, am)  # (rows, 1, L, hd) cos and sin, the same for every step
    # Steps a block may take: the schedule's, or up to one per position for the "any" threshold rule.
    max_steps = block_length if threshold is not None and threshold_rule == "any" else steps_per_block
    log_threshold = None if threshold is None else (math.log(threshold) if threshold > 0 else -math.inf)

    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        end = L if cache == "prefix" else e  # cached steps recompute positions [s, end)
        block = x[:, s:e]  # a view: writing into it writes into x
        counts = (block == mask_id).sum(1).tolist()  # masked positions per row at the block's start
        schedule = num_transfer_tokens(counts, steps_per_block)  # (B, steps_per_block) on the host ...
        k_dev = torch.tensor(schedule, device=device).T  # ... and on the device: (steps_per_block, B)
        kv = None
        calls = 0  # model calls in this block: the cache is refilled at calls 0, k, 2k, ... (k = cache_refresh)
        for step in range(max_steps):
            if threshold is None and max(row[step] for row in schedule) == 0:
                continue  # the schedule commits nothing in any row: the step cannot change the state
            masked = block == mask_id  # (B, bl)
            # One sync per step: the masked counts per row size the rows' noise draws and the gather below. They do
            # not follow from the schedule: a proposal may be the [MASK] token itself, which leaves its position
            # masked (as in the reference).
            left = masked.sum(1).tolist()
            n = sum(left)
            if n == 0:  # every row has decoded the block (threshold modes)
                break
            if cfg_scale > 0:
                xx[B:, P:] = x[:, P:]  # unconditional rows: the prompt stays MASK, the completion follows x
            refill = cache != "none" and (calls == 0 or (cache_refresh is not None and calls % cache_refresh == 0))
            h, kv, ran = block_hidden(model, xx, am, rope, s, e, end, cache, kv, refill)  # h (B or 2B, bl, D)
            calls += 1
            if stats is not None:
                stats["calls"] = stats.get("calls", 0) + 1
                stats["positions"] = stats.get("positions", 0) + xx.shape[0] * ran
            # The head runs on the whole block, not only on the masked rows: a matmul's bits can depend on its row
            # count (BLAS picks kernels by shape), and a row's logits must not depend on what else is masked in the
            # batch (batched == one at a time).
            logits = model.head(h)  # (B or 2B, bl, V)
            if cfg_scale > 0:
                cond, uncond = logits.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            # the masked positions, row-major: (n, V); nonzero_static with the known n makes no second sync
            logits = logits.flatten(0, 1)[torch.nonzero_static(masked.flatten(), size=n).squeeze(1)]
            x0, conf = propose_rows(logits, left, temperature, remasking, gens)  # (n,)
            score = torch.full(masked.shape, -torch.inf, dtype=torch.float64, device=device)
            score.masked_scatter_(masked, conf)  # (B, bl) log-confidence, -inf where not masked
            cand = block.masked_scatter(masked, x0)  # (B, bl): the proposals at the masked positions
            k_step = commit_counts(k_dev, step, score, log_threshold, threshold_rule)  # (B,)
            block.copy_(torch.where(commit_mask(score, k_step, masked), cand, block))
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
                   help="fast mode: also commit the positions whose confidence exceeds this (e.g. 0.9)")
    p.add_argument("--threshold-rule", default="fixed-floor", choices=THRESHOLD_RULES,
                   help="with --threshold: fixed-floor = max(scheduled k, count above threshold) per step (never more "
                        "model calls than the schedule); any = every position above it, at least one (Fast-dLLM)")
    p.add_argument("--cache", default="none", choices=CACHE_MODES,
                   help="fast mode: approximate KV cache refreshed once per block (prefix, or dual = prefix + suffix)")
    p.add_argument("--cache-refresh", type=positive_int, default=None,
                   help="with --cache: refill the cache every N model calls of a block (default: once per block; "
                        "1 = the exact sampler)")
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
    if args.cache_refresh is not None and args.cache == "none":
        p.error(f"--cache-refresh {args.cache_refresh}: refreshes a cache, pass --cache prefix or dual with it")
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
                   generator=gen, threshold=args.threshold, cache=args.cache,
                   threshold_rule=args.threshold_rule, cache_refresh=args.cache_refresh)
    dt = time.time() - t0
    for q, row in zip(args.prompt, out[:, ids.shape[1]:]):
        print(f"### {q}\n{tokenizer.decode(row, skip_special_tokens=True)}\n")
    print(f"({out.shape[0]} x {args.gen_length} tokens in {dt:.2f}s, {out.shape[0] * args.gen_length / dt:.1f} tok/s)")


if __name__ == "__main__":
    run_cli(main)
