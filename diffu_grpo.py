"""diffu-GRPO: policy-gradient RL for a masked diffusion LM (stage 2 of d1).

One outer step:
  1. sample G completions per prompt with the masked sampler (sample.generate);
  2. reward them (rewards.py); advantage = reward - mean of its group (optionally / std);
  3. draw mu mask seeds and store them with the rollout; with them compute, once and under no_grad,
     the old-policy and reference log-probs of every completion for all mu masks;
  4. take mu optimizer steps; inner step k uses mask k for the policy, old and reference log-probs alike.
Log-probs come from d1's one-step mean-field estimator (`completion_logprobs`): the prompt is masked with
probability p_mask_prompt (0.15), the WHOLE completion is masked, one forward pass, and each completion
token's log-prob is read off the logits at its position. Loss per token (clipped surrogate + k3 KL):
  -min(r A, clip(r, 1-eps, 1+eps) A) + beta (exp(ref - logp) - (ref - logp) - 1),   r = exp(logp - old)
over completion tokens up to and including the first EOS, divided by the number of such tokens in the
GLOBAL batch of the optimizer step.

Deliberate differences from the public d1 code (method.md, "Pitfalls"):
- mask seeds are stored with the rollout and indexed by inner step k (d1 indexed them after the step counter
  moved, so with grad accumulation each micro-batch saw only mu/2 distinct masks);
- masks come from local torch.Generators keyed on (mask seed, GLOBAL completion index); d1 reseeded the
  global RNGs inside the loss. Rollout noise is keyed the same way: N processes reproduce 1 process;
- Gumbel noise in float64, log-softmax in fp32 and only at completion positions, in chunks (d1: bf16, full
  sequence, full vocabulary);
- the loss is normalised by the completion tokens of the global batch, not per micro-batch (split-invariant);
- mu = 1 with beta > 0 works; beta = 0 skips the reference pass; padding is masked in attention (d1 attended
  to left padding); the reference policy is the LoRA-disabled network (no second copy), or a frozen copy
  with full fine-tuning;
- rewards fixed as documented in rewards.py (safe Countdown evaluator, DOTALL regexes, negative GSM8K, ...);
- validation on a held-out split of the TRAINING data; the test set is never used for selection.

Full fine-tuning (--lora-r 0): fp32 master weights, gradients and AdamW state (~16 bytes/parameter, 128 GB at 8B)
plus, with beta > 0, a frozen bf16 copy as the KL reference (2 bytes/parameter; --beta 0 drops it and the
reference pass). Plain DDP replicates all of it on every GPU; --fsdp shards policy and reference over the ranks
(FSDP2, model.shard_fsdp) and writes sharded checkpoints (torch.distributed.checkpoint; --export converts one to
an HF-layout model, --merge writes one at the end). --fsdp is explicit, never automatic; LoRA stays on DDP. The
sampler and the log-prob estimator run on the sharded model as they are (each sharded unit all-gathers itself
when called). Start-up prints the per-GPU memory budget (model.memory_budget, computed) and refuses to start when
it exceeds the GPU's memory.

Commands:
  CPU smoke test:  python diffu_grpo.py --init tiny --task sudoku --train-path puzzles.csv --style compact \\
                       --gen-length 32 --block-length 16 --diffusion-steps 16 --max-steps 3
  1 GPU:           python diffu_grpo.py --task gsm8k
  8 GPUs (d1):     torchrun --nproc_per_node=8 diffu_grpo.py --task gsm8k
  mixed tasks:     torchrun --nproc_per_node=8 diffu_grpo.py --task gsm8k,math,countdown,sudoku
  8 GPUs, full fine-tuning (sharded):
                   torchrun --standalone --nproc_per_node=8 diffu_grpo.py --task gsm8k --init out/sft-s1k-full/merged \\
                       --lora-r 0 --fsdp --grad-checkpointing --merge
  2 nodes x 8 GPUs (the same line on each node, NODE_RANK 0 and 1; --out-dir on a filesystem both nodes see):
                   torchrun --nnodes 2 --nproc_per_node 8 --node-rank $NODE_RANK --rdzv-backend c10d \\
                       --rdzv-endpoint $HOST:29500 diffu_grpo.py --task gsm8k --init out/sft-s1k-full/merged \\
                       --lora-r 0 --fsdp --grad-checkpointing --merge --out-dir /shared/out/grpo-full
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from model import (LLaDA, adapter_base, apply_lora, check_memory_budget, checkpoints, example_generator,
                   export_sharded_checkpoint, load_adapter, load_checkpoint_state, load_sharded_checkpoint,
                   load_tokenizer, lora_disabled, lora_modules, make_char_tokenizer, mask_tokens, memory_budget,
                   merge_lora, open_metrics, preset_config, row_uniforms, save_checkpoint, save_pretrained_fsdp,
                   save_sharded_checkpoint, shard_fsdp)
import data
import eval as evaluation
import rewards
from sample import generate, left_pad

# d1's per-task defaults (launch scripts): inner iterations mu and total outer steps.
TASK_MU = {"gsm8k": 12, "math": 12, "countdown": 8, "sudoku": 8, "code": 12}
TASK_STEPS = {"gsm8k": 7700, "math": 6600, "countdown": 5000, "sudoku": 3800, "code": 5000}
# d1 left-truncated prompts to 200 tokens; coding prompts (instructions + problem + signature) need more.
TASK_PROMPT_LENGTH = {"code": 512}

# -----------------------------------------------------------------------------
# The estimator and the loss


def _token_logprobs(head, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """h (b, G, D), tokens (b, G) -> log p(token) (b, G) fp32: head + fp32 log-softmax, gathered."""
    logits = head(h).float()  # (b, G, V)
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                        mask_gens: list[torch.Generator], p_mask_prompt: float, mask_id: int,
                        chunk_rows: int = 2) -> torch.Tensor:
    """d1's one-step mean-field log-probs of the completion tokens.

    prompt_ids, prompt_mask (B, P) left-padded; completion_ids (B, G); mask_gens one generator per row.
    Real prompt tokens -> [MASK] with probability p_mask_prompt, every completion token -> [MASK], one forward
    pass, and log p(completion_ids[i, j]) read at completion position j. Returns (B, G) fp32.
    The output head runs on `chunk_rows` rows at a time (checkpointed under grad), so the (B, G, V) logits
    never exist at once: at 126k vocabulary they would be the largest tensor of the step."""
    B, P = prompt_ids.shape
    u = row_uniforms(mask_gens, prompt_mask)
    noisy_prompt, _ = mask_tokens(prompt_ids, prompt_mask.bool(), p_mask_prompt, u, mask_id)
    x = torch.cat([noisy_prompt, torch.full_like(completion_ids, mask_id)], dim=1)  # (B, P + G)
    am = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
    # Through the model's forward (DDP/FSDP hooks); sliced outside it: FSDP warns when a forward returns a view.
    h = model(x, am, return_hidden=True)[:, P:]  # (B, G, D)
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


# -----------------------------------------------------------------------------
# Helpers


def unwrap(model):
    return model.module if isinstance(model, DDP) else model


def gather_keys(d: dict, world: int) -> list:
    """Every rank's dict keys (a rank may lack a task's components in a mixed run)."""
    out = [None] * world
    dist.all_gather_object(out, list(d))
    return out


@functools.lru_cache(maxsize=16)  # the current and next epoch of each task: a step may straddle them
def epoch_order(n: int, seed: int, epoch: int, task: int = 0) -> list[int]:
    """The order of a task's training prompts in an epoch: depends only on (seed, epoch, task)."""
    return torch.randperm(n, generator=example_generator(seed, 4, epoch, task)).tolist()


def step_prompts(sizes: list[int], step: int, per_step: int, seed: int) -> list[int]:
    """Indices, into the tasks' training sets concatenated in order, of the prompts of global step `step`.
    Prompt slots go to the tasks in turn, so each task gets an equal share however large its dataset is (the
    sizes differ by 100x between GSM8K and Sudoku); each task walks through its own shuffled epochs."""
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        t, k = pos % len(sizes), pos // len(sizes)
        epoch, i = divmod(k, sizes[t])
        out.append(offsets[t] + epoch_order(sizes[t], seed, epoch, t)[i])
    return out


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
        tokenizer = load_tokenizer(init if (init / "tokenizer.json").is_file() else base)
        model = merge_lora(load_adapter(LLaDA.from_pretrained(base, dtype=load_dtype, device=load_device), init))
        if lora:  # our adapters need a real base folder: the merged starting point, written once
            base_name = str(Path(args.out_dir) / "init-merged")
            if master and not (Path(base_name) / "config.json").is_file():
                model.save_pretrained(base_name, tokenizer=tokenizer)
    else:
        tokenizer = load_tokenizer(args.init)
        model = LLaDA.from_pretrained(args.init, dtype=load_dtype, device=load_device)
    ref = None
    if lora:  # the reference policy is this network with the adapters disabled (lora_disabled)
        model = apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets.split(","),
                           seed=args.seed)
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
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="diffu-GRPO reinforcement learning for LLaDA (d1 stage 2).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # model
    p.add_argument("--init", default="GSAI-ML/LLaDA-8B-Instruct",
                   help="starting model: hub id / folder (base or merged SFT), an SFT adapter folder, or 'tiny'")
    p.add_argument("--base-model", default=None, help="base model of an --init adapter (default: from its config)")
    p.add_argument("--lora-r", type=int, default=128, help="LoRA rank; 0 = full fine-tuning")
    p.add_argument("--lora-alpha", type=float, default=64)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,up_proj",
                   help="block modules to adapt (d1's q/k/v/o/gate/up/down list matches these four in LLaDA)")
    # data
    p.add_argument("--task", default="gsm8k",
                   help="task or comma-separated mix: gsm8k, math, countdown, sudoku (d1's four) and code (KodCode)")
    p.add_argument("--train-path", default=None, help="local training file (else the hub source of tasks.md)")
    p.add_argument("--style", default="rl", choices=["rl", "compact"], help="prompt style (compact: tiny models)")
    p.add_argument("--max-prompt-length", type=int, default=None,
                   help="prompts are left-truncated to this many tokens (default: 200 as d1; 512 with code)")
    # rollouts
    p.add_argument("--num-generations", type=int, default=6, help="G: completions per prompt")
    p.add_argument("--prompts-per-step", type=int, default=16, help="prompts per outer step, all ranks together")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--diffusion-steps", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--gen-batch-size", type=int, default=48, help="completions per sampler call")
    p.add_argument("--threshold", type=float, default=None, help="opt-in fast parallel decoding for rollouts")
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual"],
                   help="opt-in approximate KV cache for rollouts (Fast-dLLM); changes the samples")
    # objective
    p.add_argument("--mu", type=int, default=None, help="inner iterations per rollout (default: d1's per task)")
    p.add_argument("--p-mask-prompt", type=float, default=0.15)
    p.add_argument("--eps", type=float, default=0.5, help="clipping epsilon")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (0 skips the reference pass)")
    p.add_argument("--scale-rewards", action="store_true", help="divide advantages by the group std (d1: no)")
    p.add_argument("--random-reward", action="store_true", help="control run: train on U(0,1) noise as reward")
    # optimisation
    p.add_argument("--lr", type=float, default=3e-6)
    p.add_argument("--betas", default="0.9,0.99")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=0.2)
    p.add_argument("--micro-batch-size", type=int, default=6, help="completions per forward/backward")
    p.add_argument("--max-steps", type=int, default=None, help="outer steps (default: d1's per task)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--fsdp", action="store_true",
                   help="full fine-tuning (--lora-r 0) under torchrun: shard weights, gradients, AdamW state and the "
                        "KL reference over the ranks (FSDP2); checkpoints are sharded (torch.distributed.checkpoint)")
    # bookkeeping
    p.add_argument("--out-dir", default="out/grpo")
    p.add_argument("--eval-every", type=int, default=100, help="validation accuracy every N steps (0 = never)")
    p.add_argument("--val-size", type=int, default=64, help="validation prompts (held out from TRAINING data)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--keep-last", type=int, default=0, help="keep only the last N checkpoints (0 = all)")
    p.add_argument("--resume", default=None, help="checkpoint folder, or 'auto' for the newest in --out-dir")
    p.add_argument("--merge", action="store_true",
                   help="at the end write out_dir/merged: a full HF-layout model (LoRA merged; --fsdp: gathered)")
    p.add_argument("--export", default=None, metavar="CKPT",
                   help="convert the sharded checkpoint folder CKPT to an HF-layout model in CKPT-hf (one process, "
                        "CPU, in --dtype) and exit")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32",
                   choices=["float32", "bfloat16"])
    p.add_argument("--log-every", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.export:
        out = export_sharded_checkpoint(args.export, args.export.rstrip("/") + "-hf", getattr(torch, args.dtype))
        print(f"wrote {out}")
        return
    if args.fsdp and (args.lora_r > 0 or "RANK" not in os.environ):
        raise ValueError("--fsdp shards full fine-tuning: use it with --lora-r 0, under torchrun (LoRA runs on DDP)")
    if args.fsdp and args.threshold is not None:
        raise ValueError("--threshold makes the number of sampler forwards differ between ranks, which FSDP's "
                         "collective all-gathers cannot follow: leave it unset with --fsdp")

    # -- distributed setup: the same script runs under `python` and `torchrun`
    ddp = "RANK" in os.environ
    if ddp:
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if args.device.startswith("cuda") else args.device
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
    else:
        rank, world, device = 0, 1, args.device
    master = rank == 0
    dtype = getattr(torch, args.dtype)
    autocast = torch.autocast("cuda", dtype=dtype) if device.startswith("cuda") else contextlib.nullcontext()

    tasks = args.task.split(",")
    mu = args.mu or max(TASK_MU.get(t, 8) for t in tasks)
    args.max_prompt_length = args.max_prompt_length or max(TASK_PROMPT_LENGTH.get(t, 200) for t in tasks)
    max_steps = args.max_steps or max(TASK_STEPS.get(t, 1000) for t in tasks)
    G = args.num_generations
    if args.prompts_per_step % world:
        raise ValueError(f"--prompts-per-step {args.prompts_per_step} must be divisible by the world size {world}: "
                         "each rank owns whole prompt groups")
    prompts_per_rank = args.prompts_per_step // world
    local_n = prompts_per_rank * G
    if local_n % args.micro_batch_size:
        raise ValueError(f"completions per rank ({prompts_per_rank} prompts x {G}) = {local_n} must be divisible "
                         f"by --micro-batch-size {args.micro_batch_size}")
    accum = local_n // args.micro_batch_size
    if master:
        print(f"world {world} | prompts/step {args.prompts_per_step} ({prompts_per_rank}/rank) x G={G} = "
              f"{args.prompts_per_step * G} completions per optimizer step | micro-batch {args.micro_batch_size}, "
              f"grad accum {accum} | mu {mu} | steps {max_steps}")

    model, tokenizer, base_name, ref_model = build_model(args, device, dtype, master)
    budget = memory_budget(model.config, world, args.lora_r, fsdp=args.fsdp, reference=ref_model is not None,
                           lora_targets=args.lora_targets.split(","), compute_bytes=dtype.itemsize,
                           micro_batch=args.micro_batch_size, seq_len=args.max_prompt_length + args.gen_length,
                           logit_rows=2 * args.gen_length, grad_checkpointing=args.grad_checkpointing,
                           grad_accum=accum)  # logits: completion_logprobs' 2-row chunks
    line = check_memory_budget(budget, device)  # raises on every rank when it cannot fit the GPU
    if master:
        print(line)
        if ref_model is not None:
            print(f"KL reference: a frozen {args.dtype} copy of the weights, {budget['reference'] / 2**30:.2f} GiB "
                  f"per GPU ({'sharded' if args.fsdp else 'replicated'}); --beta 0 drops it and its forward passes")
    mask_id, eos_id = model.config.mask_token_id, model.config.eos_token_id
    train = data.load_tasks(args.task, "train", path=args.train_path, style=args.style)
    val = data.load_tasks(args.task, "val", path=args.train_path, style=args.style, limit=args.val_size)
    train = [ex for task in tasks for ex in train if ex["task"] == task]  # grouped by task, in --task order
    sizes = [sum(ex["task"] == task for ex in train) for task in tasks]
    if min(sizes) == 0:
        raise ValueError(f"no training prompts for task {tasks[sizes.index(0)]!r} (train path: {args.train_path})")
    encode = lambda ex: tokenizer(data.format_prompt(tokenizer, ex["prompt"]),
                                  add_special_tokens=False)["input_ids"][-args.max_prompt_length:]  # left-truncate
    if master:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{len(train)} training / {len(val)} validation prompts | {trainable:,} trainable parameters")
    if args.eval_every and not val:
        if master:
            print(f"warning: no validation prompts for --task {args.task}: periodic validation is off")
        args.eval_every = 0
    if args.fsdp and args.eval_every and len(val) % world:
        raise ValueError(f"--fsdp: the {len(val)} validation prompts must split evenly over {world} ranks (every rank "
                         "must run as many sampler forwards: FSDP's all-gathers are collective); change --val-size")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=tuple(map(float, args.betas.split(","))),
                                  weight_decay=args.weight_decay)
    out_dir = Path(args.out_dir)
    step = 0
    if args.resume:
        ckpt = args.resume
        if ckpt == "auto":
            found = checkpoints(out_dir)
            ckpt = found[-1] if found else None
        if ckpt is not None:
            state = (load_sharded_checkpoint if args.fsdp else load_checkpoint_state)(ckpt, model, optimizer)
            step = state["step"]
            for key in ("seed", "task", "prompts_per_step", "num_generations", "train_path"):  # the data order
                if state["args"][key] != getattr(args, key):
                    raise ValueError(f"--resume {ckpt}: --{key.replace('_', '-')} was {state['args'][key]!r}, now "
                                     f"{getattr(args, key)!r}; the run would skip or repeat prompts")
            if master:
                print(f"resumed from {ckpt} at step {step}")
    # FSDP's hooks live on the model itself; DDP wraps it.
    policy = DDP(model, device_ids=[device] if device.startswith("cuda") else None) if ddp and not args.fsdp else model
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2))
    metrics_file = open_metrics(out_dir / "metrics.jsonl", step) if master else None
    bar = tqdm(total=max_steps, initial=step, disable=not master, desc="diffu-GRPO")

    while step < max_steps:
        # Dropout noise (the only use of the global RNG) reseeded per (step, rank): resuming is exact.
        torch.manual_seed(int(torch.randint(2**62, (), generator=example_generator(args.seed, 5, step, rank))))
        log = {"step": step + 1}
        # ---- 1. rollouts: this rank's whole prompt groups
        t0 = time.time()
        idx = step_prompts(sizes, step, args.prompts_per_step, args.seed)[rank * prompts_per_rank:
                                                                              (rank + 1) * prompts_per_rank]
        examples = [train[i] for i in idx for _ in range(G)]
        gidx = [(rank * prompts_per_rank + j // G) * G + j % G for j in range(local_n)]  # global completion index
        prompt_ids, prompt_mask = left_pad([encode(ex) for ex in examples], eos_id, device)
        raw = unwrap(policy)
        raw.eval()
        completions = []
        for r in range(0, local_n, args.gen_batch_size):
            gens = [example_generator(args.seed, 1, step, g) for g in gidx[r:r + args.gen_batch_size]]
            with autocast:
                out = generate(raw, prompt_ids[r:r + args.gen_batch_size], prompt_mask[r:r + args.gen_batch_size],
                               steps=args.diffusion_steps, gen_length=args.gen_length,
                               block_length=args.block_length, temperature=args.temperature, generator=gens,
                               threshold=args.threshold, cache=args.cache)
            completions.append(out[:, prompt_ids.shape[1]:])
        completion_ids = torch.cat(completions)  # (local_n, gen_length)
        t_gen = time.time() - t0

        # ---- 2. rewards and advantages (each rank scores its own groups)
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        total = torch.zeros(local_n)
        comp_sums: dict[str, float] = {}  # "task/component" -> sum over this rank's completions
        for task in tasks:
            rows = [i for i, ex in enumerate(examples) if ex["task"] == task]
            comp_sums[f"{task}/count"] = float(len(rows))
            if not rows:
                continue
            scores = rewards.score(task, [texts[i] for i in rows], [examples[i]["target"] for i in rows])
            total[rows] = torch.tensor(scores["total"], dtype=torch.float32)
            for name, vals in scores.items():
                comp_sums[f"{task}/{name}"] = sum(vals)
        true_total = total.clone()
        if args.random_reward:  # control: the same run, trained on noise
            total = torch.stack([torch.rand((), generator=example_generator(args.seed, 3, step, g)) for g in gidx])
        advantages = group_advantages(total, G, args.scale_rewards).to(device)
        cmask = completion_mask(completion_ids, eos_id)
        n_tokens = cmask.sum()
        if ddp:
            dist.all_reduce(n_tokens)
        normalizer = n_tokens.item()

        # ---- 3. mask seeds stored with the rollout; old and reference log-probs for all mu masks, no_grad
        mask_seeds = torch.randint(0, 2**62, (mu,), generator=example_generator(args.seed, 2, step)).tolist()
        gens_for = lambda k, rows: [example_generator(mask_seeds[k], gidx[i]) for i in rows]
        est = lambda m, k, rows: completion_logprobs(m, prompt_ids[rows], prompt_mask[rows], completion_ids[rows],
                                                     gens_for(k, rows), args.p_mask_prompt, mask_id)
        t0 = time.time()
        old_logp = ref_logp = None
        with torch.no_grad(), autocast:
            mbs = [list(range(r, r + args.micro_batch_size)) for r in range(0, local_n, args.micro_batch_size)]
            if mu > 1:  # with mu = 1 the old policy IS the current one: use logp.detach() below
                old_logp = torch.stack([torch.cat([est(raw, k, rows) for rows in mbs]) for k in range(mu)])
            if args.beta > 0:
                with (lora_disabled(raw) if ref_model is None else contextlib.nullcontext()):
                    ref = raw if ref_model is None else ref_model
                    ref_logp = torch.stack([torch.cat([est(ref, k, rows) for rows in mbs]) for k in range(mu)])
        t_logp = time.time() - t0

        # ---- 4. mu optimizer steps over the same rollout
        t0 = time.time()
        policy.train()
        sums = {"loss": 0.0, "clip_frac": 0.0, "ratio": 0.0, "kl": 0.0}
        for k in range(mu):
            for j, rows in enumerate(mbs):
                last = j == len(mbs) - 1
                if args.fsdp:  # FSDP's no_sync: keep unsharded gradients until the last micro-step, then reduce-scatter
                    policy.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext() if (last or not ddp or args.fsdp) else policy.no_sync()
                with sync:
                    with autocast:
                        logp = est(policy, k, rows)
                    old = logp.detach() if old_logp is None else old_logp[k, rows]
                    ref = None if ref_logp is None else ref_logp[k, rows]
                    loss, st = grpo_loss(logp, old, ref, advantages[rows], cmask[rows], args.eps, args.beta,
                                         normalizer)
                    (loss * world).backward()  # DDP averages gradients over ranks; we want the global sum
                sums["loss"] += loss.item()
                for key, v in st.items():
                    sums[key] += v
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t_train = time.time() - t0
        step += 1

        # ---- logging (sums reduced over ranks, then divided by global counts)
        groups = true_total.view(-1, G)
        comp_keys = sorted(comp_sums) if not ddp else sorted(set().union(*gather_keys(comp_sums, world)))
        red = torch.tensor([true_total.sum(), (true_total ** 2).sum(), float(local_n),
                            float((groups.std(1) == 0).sum()) if G > 1 else float(len(groups)), float(len(groups)),
                            sums["clip_frac"], sums["ratio"], sums["kl"], sums["loss"], float(cmask.sum())]
                           + [comp_sums.get(k, 0.0) for k in comp_keys], dtype=torch.float64, device=device)
        if ddp:
            dist.all_reduce(red)
        red = red.tolist()
        n, mean = red[2], red[0] / red[2]
        tok = normalizer * mu
        log.update({"reward": mean, "reward_std": math.sqrt(max(red[1] / n - mean ** 2, 0.0)),
                    "zero_std_groups": red[3] / red[4], "clip_frac": red[5] / tok, "ratio": red[6] / tok,
                    "kl": red[7] / tok, "loss": red[8] / mu, "completion_len": red[9] / n,
                    "grad_norm": float(grad_norm), "t_gen": t_gen, "t_logp": t_logp, "t_train": t_train,
                    "gen_tok_s": n * args.gen_length / max(t_gen, 1e-9)})
        comp = dict(zip(comp_keys, red[10:]))
        log.update({f"reward/{k}": v / max(1.0, comp[k.split("/")[0] + "/count"])
                    for k, v in comp.items() if not k.endswith("/count")})
        if args.eval_every and (step % args.eval_every == 0 or step == max_steps):
            log.update(validate(raw, tokenizer, val, args, rank, world, autocast))
        if master:
            metrics_file.write(json.dumps(log) + "\n")
            metrics_file.flush()
            if step % args.log_every == 0:
                bar.write(f"step {step:5d} | reward {log['reward']:.3f} ± {log['reward_std']:.3f} | zero-std "
                          f"{log['zero_std_groups']:.2f} | kl {log['kl']:.4f} | clip {log['clip_frac']:.3f} | "
                          f"len {log['completion_len']:.0f} | gen {t_gen:.1f}s logp {t_logp:.1f}s train {t_train:.1f}s"
                          + (f" | val {log['val_accuracy']:.3f}" if "val_accuracy" in log else ""))
            bar.update(1)
        if step % args.save_every == 0 or step == max_steps:
            if args.fsdp:  # every rank writes its shards
                save_sharded_checkpoint(out_dir / f"step-{step:06d}", raw, optimizer, {"args": vars(args), **log},
                                        tokenizer)
            elif master:
                save_checkpoint(out_dir / f"step-{step:06d}", raw, optimizer, {"args": vars(args), **log},
                                tokenizer, base_model=base_name)
            if master:
                for old_ckpt in checkpoints(out_dir)[:-args.keep_last] if args.keep_last else []:
                    shutil.rmtree(old_ckpt)
        if ddp:
            dist.barrier()
    bar.close()
    if args.merge and args.fsdp:  # gathered to rank 0, written there (every rank takes part)
        save_pretrained_fsdp(model, out_dir / "merged", tokenizer, dtype)
    elif args.merge and master:
        merged = merge_lora(model) if lora_modules(model) else model
        merged.to(dtype).save_pretrained(out_dir / "merged", tokenizer=tokenizer)
    if args.merge and master:
        print(f"wrote {out_dir / 'merged'}")
    if ddp:
        # Two barriers: gloo's worker threads may still be freeing the last collective's buffers after one,
        # and tearing down under them aborts the process (seen with torch 2.13 on CPU).
        dist.barrier()
        dist.barrier()
        dist.destroy_process_group()


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
    main()
