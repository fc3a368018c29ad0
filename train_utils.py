"""Training plumbing shared by sft.py and diffu_grpo.py (eval.py uses the process-group part): the model and
its files live in model.py; this is what a training RUN needs around it.

    init_distributed, close_distributed              the process group under torchrun (nccl on GPU, gloo on CPU)
    all_reduce_sums                                  a dict of logging sums, summed over the ranks
    claim_out_dir                                    the run folder: a lock, refusal of a used folder, --overwrite
    merge_record, check_init_merged                  OUT/init-merged: what an RL run's adapters build on
    save_run_checkpoint, resume_training, MetricsLog                    training checkpoints, resume, metrics
    save_checkpoint, load_checkpoint_state, checkpoints                 (the files underneath)
    shard_fsdp, save/load_sharded_checkpoint, export_sharded_checkpoint FSDP2 full fine-tuning
    memory_budget, check_memory_budget                                  the per-GPU memory budget (computed)
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from model import (Config, LLaDA, atomic_dir, load_safetensors, load_tokenizer, lora_modules, param_count, peft_key,
                   save_tokenizer, write_adapter_files, write_hf_files)

# -----------------------------------------------------------------------------
# The process group: the same script runs under `python` (one process) and `torchrun`


def init_distributed(device: str) -> tuple[bool, int, int, str]:
    """(ddp, rank, world, device). Under torchrun (RANK in the environment) join the process group, nccl for
    CUDA and gloo for CPU, each process on its own GPU (LOCAL_RANK); under plain `python`, one process on device."""
    if "RANK" not in os.environ:
        return False, 0, 1, device
    cuda = device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return True, dist.get_rank(), dist.get_world_size(), device


def close_distributed() -> None:
    """Leave the process group. Two barriers: gloo's worker threads may still be freeing the last collective's
    buffers after one, and tearing down under them aborts the process (torch 2.13 on CPU; see also run_cli)."""
    dist.barrier()
    dist.barrier()
    dist.destroy_process_group()


def all_reduce_sums(sums: dict[str, float], device, ddp: bool, world: int) -> dict[str, float]:
    """A dict of numbers summed over ranks (a key a rank lacks counts 0 there: a mixed run's rank may have no
    prompt of some task)."""
    if not ddp:
        return dict(sums)
    everyone = [None] * world
    dist.all_gather_object(everyone, sorted(sums))
    keys = sorted(set().union(*everyone))
    t = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))



# -----------------------------------------------------------------------------
# Run folders

# What a training run writes into its --out-dir: what --overwrite may delete.
RUN_FILES = ("args.json", "metrics.jsonl", "step-*", "merged", "init-merged", "wandb", "tensorboard")
LOCK_FILE = "run.lock"
TEMP_DIR = re.compile(r".+\.(?:tmp|old)(\d+)")  # atomic_dir's and save_sharded_checkpoint's temporary names


@contextlib.contextmanager
def claim_out_dir(out_dir, *, resume: bool = False, overwrite: bool = False, run_files=RUN_FILES,
                  resumable: bool = True, log=print):
    """Hold the run folder for one run: call on rank 0 only, before anything loads.

    - a lock (OUT/run.lock, naming the pid and host) is held while the run writes: a second run into the same
      folder is refused; a dead run's lock is taken over with a message (lock_out_dir);
    - temporary checkpoint folders of dead runs (step-N.tmpPID, *.oldPID) are deleted;
    - a folder that already holds anything is refused, unless `resume` (continue the run in it) or `overwrite`,
      which first deletes the earlier run's files (only names in run_files: anything else there is refused), so
      nothing of the old run survives to be resumed by a later --resume auto (resumable=False: the refusal does
      not offer --resume)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = lock_out_dir(out_dir, log)
    try:
        for p in sorted(out_dir.iterdir()):
            m = TEMP_DIR.fullmatch(p.name)
            if m and p.is_dir():
                pid = int(m.group(1))
                if pid != os.getpid() and pid_alive(pid):
                    log(f"left {p} alone: process {pid} is still running")
                    continue
                shutil.rmtree(p)
                log(f"removed {p}: a temporary checkpoint folder of a run that died (pid {pid})")
        held = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE)
        if held and not resume:
            listed = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            if not overwrite:
                raise FileExistsError(f"{out_dir} already holds a run ({listed}): pass "
                                      + "--resume auto to continue it, " * resumable
                                      + "--overwrite to delete it and start over, or choose another --out-dir")
            foreign = [n for n in held if not any(fnmatch.fnmatch(n, pattern) for pattern in run_files)]
            if foreign:
                raise FileExistsError(f"--overwrite deletes only a run's own files, and {out_dir} also holds "
                                      f"{', '.join(foreign)}: move them or choose another --out-dir")
            for name in held:
                (shutil.rmtree if (out_dir / name).is_dir() else os.remove)(out_dir / name)
            log(f"--overwrite: deleted the earlier run in {out_dir} ({listed})")
        yield out_dir
    finally:
        lock_path = out_dir / LOCK_FILE
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:  # still our lock file
                os.remove(lock_path)
        os.close(fd)  # releases the flock


def lock_out_dir(out_dir: Path, log=print) -> int:
    """Take OUT/run.lock; returns its descriptor (close it to release). The lock is an flock, which the kernel
    drops when its process dies, so a lock that can be taken is free: the file names the pid and host of its
    last holder, for the messages. A lock file of another host is refused: this host cannot tell whether that
    run is alive (and a network filesystem may not share flocks between hosts)."""
    import fcntl
    path = out_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise FileExistsError(f"{out_dir} is in use by another run (pid {holder.get('pid', '?')} on "
                                  f"{holder.get('host', '?')}, since {holder.get('started', '?')}; lock file "
                                  f"{path}): wait for it to end, or choose another --out-dir") from None
        except OSError as e:
            os.close(fd)
            raise RuntimeError(f"cannot lock {path} ({e}): this filesystem does not support file locks; choose "
                               "an --out-dir on another filesystem") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not a file a finishing run deleted meanwhile
                break
        os.close(fd)
    holder, host = _lock_holder(fd), socket.gethostname()
    if holder.get("host", host) != host:
        os.close(fd)
        raise FileExistsError(f"{path} names a run of pid {holder.get('pid', '?')} on host {holder['host']}, which "
                              f"this host ({host}) cannot check: if that run has ended, delete {path}")
    if holder.get("pid") is not None:
        log(f"{out_dir}: taking over the lock of pid {holder['pid']} (no longer running)")
    record = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def _lock_holder(fd: int) -> dict:
    """The JSON record of a lock file ({} when empty or unreadable)."""
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def merge_record(adapter: Path, base: str) -> dict:
    """What OUT/init-merged is merged from: the adapter folder, its base model and a hash of the adapter's files."""
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(adapter / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return {"adapter": str(adapter.resolve()), "base": base, "sha256": h.hexdigest()}


def check_init_merged(folder: Path, record: dict) -> bool:
    """Whether OUT/init-merged exists (a resumed run) and was merged from the adapter and base of `record`
    (merge_record, kept in merged_from.json). The run's checkpoints are adapters trained on top of it, so one
    merged from another --init is refused, never silently reused."""
    if not (folder / "config.json").is_file():
        return False
    path = folder / "merged_from.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if (old.get("sha256"), old.get("base")) != (record["sha256"], record["base"]):
        raise ValueError(f"{folder} was merged from {old.get('adapter', 'an unrecorded adapter')} (base "
                         f"{old.get('base', '?')}), not from --init {record['adapter']} (base {record['base']}): the "
                         "run's checkpoints build on it; resume with its --init, or start over with --overwrite")
    return True


# -----------------------------------------------------------------------------
# Training checkpoints (shared by sft.py and diffu_grpo.py)


def save_checkpoint(folder, model: LLaDA, optimizer=None, state: dict | None = None, tokenizer=None,
                    base_model: str | None = None):
    """One folder, written atomically: the adapter (PEFT layout) when the model has LoRA, else the full model
    (HF layout), so `--adapter folder` / `--model folder` load it directly; plus optimizer.pt (torch.save of
    the optimizer state: tensors and numbers, loadable with weights_only=True) and state.json (step, args, ...).
    base_model (LoRA only): where the base weights are saved (folder or hub id); None = nowhere (a random
    base): they are saved with the adapter, in folder/base (see save_adapter)."""
    with atomic_dir(folder) as tmp:
        if lora_modules(model):
            write_adapter_files(model, tmp, base_model, Path(folder), tokenizer)
            if tokenizer is not None:
                save_tokenizer(tokenizer, tmp)
        else:
            model.write_files(tmp, tokenizer)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        with open(tmp / "state.json", "w") as f:
            json.dump(state or {}, f, indent=2, default=str)


def open_metrics(path, resumed_step: int):
    """Append handle on a JSONL metrics log, first dropping lines of steps after `resumed_step` (a crashed run
    logged them after its last checkpoint): the log keeps one line per step across resumes."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    path.write_text("".join(line + "\n" for line in lines if json.loads(line).get("step", 0) <= resumed_step))
    return open(path, "a")


class MetricsLog:
    """A run's metrics, one dict per `write`: a JSON line in metrics.jsonl (open_metrics) and, when asked for, the
    same numbers to Weights & Biases (`wandb_project`) and TensorBoard (event files in `tensorboard_dir`), keyed
    on the dict's "step". Neither package is a dependency (check_optional_package refuses the flag at start-up
    when its package is missing). Rank 0 makes one; other ranks log nothing."""

    def __init__(self, path, resumed_step: int, wandb_project: str | None = None, tensorboard_dir=None,
                 config: dict | None = None):
        path = Path(path)
        self.file = open_metrics(path, resumed_step)
        self.wandb = self.tensorboard = None
        if wandb_project:  # a new wandb run per launch, named after the run folder, its files in OUT/wandb
            import wandb
            (path.parent / "wandb").mkdir(exist_ok=True)
            self.wandb = wandb.init(project=wandb_project, name=path.parent.name, config=config,
                                    dir=str(path.parent))
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(tensorboard_dir))

    def write(self, row: dict):
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb is not None:
            self.wandb.log(numbers, step=row["step"])
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, row["step"])
            self.tensorboard.flush()

    def close(self):
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def checkpoints(out_dir) -> list[Path]:
    """Finished training checkpoints of a run folder (step-NNNNNN with state.json), oldest first."""
    return sorted(p for p in Path(out_dir).glob("step-*") if p.name[5:].isdigit() and (p / "state.json").is_file())


def save_run_checkpoint(out_dir, step: int, model, optimizer, state: dict, tokenizer, *, base_model: str | None,
                        fsdp: bool, master: bool, keep_last: int = 0) -> None:
    """OUT/step-NNNNNN of a training run: FSDP shards written by every rank (save_sharded_checkpoint), else the
    adapter or model written by rank 0 (save_checkpoint); then only the newest keep_last are kept (0 = all)."""
    folder = Path(out_dir) / f"step-{step:06d}"
    if fsdp:
        save_sharded_checkpoint(folder, model, optimizer, state, tokenizer)
    elif master:
        save_checkpoint(folder, model, optimizer, state, tokenizer, base_model=base_model)
    if master and keep_last > 0:
        for old in checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old)


def resume_training(resume: str | None, out_dir, model, optimizer, fsdp: bool) -> tuple[Path | None, dict | None]:
    """--resume: None (a fresh run), a checkpoint folder, or "auto" (the newest checkpoint in out_dir, if any).
    Restores the model's trainable weights and the optimizer in place; returns (checkpoint, its state.json)."""
    if resume is None:
        return None, None
    found = checkpoints(out_dir)
    ckpt = (found[-1] if found else None) if resume == "auto" else Path(resume)
    if ckpt is None:
        return None, None
    return ckpt, (load_sharded_checkpoint if fsdp else load_checkpoint_state)(ckpt, model, optimizer)


def load_checkpoint_state(folder, model: LLaDA, optimizer=None) -> dict:
    """Restore what save_checkpoint wrote into an already built model (with LoRA applied if it was LoRA)."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint (no state.json)")
    if is_sharded_checkpoint(folder):
        raise ValueError(f"{folder} holds FSDP shards (torch.distributed.checkpoint): resume it with --fsdp, or "
                         "convert it to an HF-layout model with --export")
    if lora_modules(model):
        tensors = load_safetensors(folder / "adapter_model.safetensors")
        for name, m in lora_modules(model):
            for ab in ("lora_A", "lora_B"):
                with torch.no_grad():
                    getattr(m, ab).copy_(tensors[peft_key(name, ab)])
    else:
        src = LLaDA.from_pretrained(folder, dtype=next(model.parameters()).dtype, device="cpu")
        with torch.no_grad():
            for p, q in zip(model.state_dict().values(), src.state_dict().values()):
                p.copy_(q)
    if optimizer is not None:
        device = next(model.parameters()).device
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    with open(folder / "state.json") as f:
        return json.load(f)


# -----------------------------------------------------------------------------
# Full fine-tuning at scale: FSDP2 sharding, sharded checkpoints, the per-GPU memory budget
#
# AdamW full fine-tuning needs ~16 bytes per parameter (fp32 weights, gradients, two moments): 128 GB for 8B,
# which DDP would replicate on every GPU. FSDP2 (torch.distributed.fsdp.fully_shard) keeps 1/world of each on
# every rank and all-gathers one block's weights at a time. LoRA stays on DDP (its trainable state is tiny).


def shard_fsdp(model: LLaDA, device, mp_dtype: torch.dtype | None = None, reshard_after_forward: bool = True) -> LLaDA:
    """Shard `model` in place over all ranks (call after init_process_group; build the optimizer AFTER this).

    Units: every block, the output head, and the root (embedding + final norm). The weights keep their dtype
    (fp32 master weights for training); mp_dtype (bf16 on GPU, None = no cast on CPU) is the dtype they are
    all-gathered and computed in, gradients are reduce-scattered in fp32. Parameters move to `device`.
    - The head is its own unit because callers run it AFTER the root forward, on the positions that need
      logits (sft_loss, diffu_grpo's chunked log-probs): each call all-gathers it and, in backward,
      reduce-scatters its gradient.
    - `hidden_states` is registered as a forward method: sft_loss calls it directly, not through forward.
    - reshard_after_forward applies to the root too, so a frozen model (the KL reference, which never runs
      backward) does not keep its embedding gathered after a forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # cast_forward_inputs=False: FSDP would otherwise cast every block input to bf16, RoPE's cos/sin included
    # (llada.md: rotary embeddings in full precision), and the policy would no longer match its reference.
    mp = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32 if mp_dtype is not None else None,
                              cast_forward_inputs=False)
    kw = dict(mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for block in model.transformer.blocks:
        fully_shard(block, **kw)
    fully_shard(model.transformer.ff_out, **kw)
    fully_shard(model, **kw)
    register_fsdp_forward_method(model, "hidden_states")
    return model


def is_sharded_checkpoint(folder) -> bool:
    """A step folder written by save_sharded_checkpoint (torch.distributed.checkpoint's .metadata file)."""
    return (Path(folder) / ".metadata").is_file()


def save_sharded_checkpoint(folder, model: LLaDA, optimizer, state: dict, tokenizer=None):
    """Every rank writes its shards of the model and AdamW state (torch.distributed.checkpoint); rank 0 adds
    config.json, the tokenizer and state.json. Atomic: written as <folder>.tmp<pid of rank 0>, renamed by rank 0
    after a barrier. With several nodes, out_dir must be a filesystem all of them see. Call on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    folder, master = Path(folder), dist.get_rank() == 0
    pid = [os.getpid()]
    dist.broadcast_object_list(pid)  # one temporary name for all ranks
    tmp = folder.with_name(f"{folder.name}.tmp{pid[0]}")
    if master:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)  # DTensor shards: nothing is gathered
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    if master:
        with open(tmp / "config.json", "w") as f:
            json.dump(model.config.to_dict(), f, indent=2)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        with open(tmp / "state.json", "w") as f:
            json.dump(state or {}, f, indent=2, default=str)
    dist.barrier()  # every rank's shards are on disk
    if master:
        old = folder.with_name(f"{folder.name}.old{pid[0]}")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()  # nobody reads the folder before it has its final name


def load_sharded_checkpoint(folder, model: LLaDA, optimizer) -> dict:
    """Restore save_sharded_checkpoint's model and optimizer state into a sharded model, on every rank.
    The world size may differ from the run that wrote it (DCP reshards on load). Returns state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    folder = Path(folder)
    if not is_sharded_checkpoint(folder):
        raise ValueError(f"{folder} is not a sharded (FSDP) checkpoint: it has no .metadata file")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    sd = {"model": model_sd, "optim": optim_sd}
    dcp.load(sd, checkpoint_id=folder)  # in place: each rank reads the pieces of its own shards
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    with open(folder / "state.json") as f:
        return json.load(f)


def save_pretrained_fsdp(model: LLaDA, folder, tokenizer=None, dtype: torch.dtype | None = None):
    """The consolidated HF-layout model (what LLaDA.from_pretrained, eval.py and sample.py load) of a sharded
    model: the full state dict is gathered to rank 0's CPU memory (4 bytes/parameter for fp32 weights, 32 GB at
    8B) and written there in `dtype`. Call on every rank (the gather is collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        with atomic_dir(folder) as tmp:
            write_hf_files(tmp, model.config, {k: v.to(dtype or v.dtype) for k, v in sd.items()}, tokenizer)
    dist.barrier()


def export_sharded_checkpoint(folder, out, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Convert a sharded training checkpoint (all ranks' files in `folder`) to an HF-layout model in `out`, in one
    process without torch.distributed: every shard is read into a full fp32 model in CPU memory, then written."""
    import torch.distributed.checkpoint as dcp
    folder = Path(folder)
    if not is_sharded_checkpoint(folder):
        raise ValueError(f"{folder} is not a sharded (FSDP) checkpoint: it has no .metadata file")
    with torch.device("meta"):
        model = LLaDA(Config.from_json(folder / "config.json"))
    model.to_empty(device="cpu")  # no random init of 8B parameters: every tensor is read below
    sd = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it runs without torch.distributed: that is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, checkpoint_id=folder, no_dist=True)  # the model part only; the optimizer state stays on disk
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").is_file() else None
    with atomic_dir(out) as tmp:
        write_hf_files(tmp, model.config, {k: v.to(dtype) for k, v in sd["model"].items()}, tokenizer)
    return Path(out)


def memory_budget(cfg: Config, world: int, lora_r: int, *, fsdp: bool = False, reference: bool = False,
                  lora_targets=("q_proj", "k_proj", "v_proj"), compute_bytes: int = 2, micro_batch: int = 1,
                  seq_len: int = 4096, logit_rows: int | None = None, grad_checkpointing: bool = False,
                  grad_accum: int = 1) -> dict:
    """A rough per-GPU memory budget in bytes, from the config alone (computed, not measured). Keys:
    parameters, gradients, optimizer (AdamW's two fp32 moments), reference (a frozen bf16 copy for the KL term,
    full fine-tuning with beta > 0 only), grad_accumulation (FSDP keeps UNSHARDED fp32 gradients across the
    micro-steps of an accumulation: set_requires_gradient_sync(False)), gathered (FSDP: all-gathered copies of
    two blocks + embedding + head and their unsharded gradients), activations, total.
    LoRA (lora_r > 0): frozen base in compute dtype + fp32 adapters, replicated (DDP). Full fine-tuning: fp32
    master weights, gradients and moments, replicated (DDP; + DDP's gradient buckets) or 1/world each (fsdp).
    Activations: `micro_batch` x `seq_len` tokens, ~(14 d + 4 h) compute-dtype values per token and block
    (norms, q/k/v, attention output, the MLP's four h-wide tensors; flash attention, no L x L scores), only
    the block inputs with grad_checkpointing (+ one block being recomputed), plus `logit_rows` (default: all
    tokens) rows of 126k-wide logits in compute dtype, fp32 and their fp32 gradient."""
    d, h, E, L = cfg.d_model, cfg.mlp_hidden_size, cfg.embedding_size, cfg.n_layers
    n, cb = param_count(cfg), compute_bytes
    shape = {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "attn_out": (d, d), "ff_proj": (d, h),
             "up_proj": (d, h), "ff_out": (h, d)}
    b = dict.fromkeys(["parameters", "gradients", "optimizer", "reference", "grad_accumulation", "gathered"], 0)
    if lora_r > 0:
        trainable = L * sum(lora_r * sum(shape[t]) for t in lora_targets)
        b["parameters"] = n * cb + trainable * 4
        b["gradients"] = trainable * 4 * (2 if world > 1 else 1)
        b["optimizer"] = trainable * 8
    elif fsdp:
        b["parameters"], b["gradients"], b["optimizer"] = 4 * n / world, 4 * n / world, 8 * n / world
        b["reference"] = n * cb / world if reference else 0
        b["grad_accumulation"] = 4 * n if grad_accum > 1 else 0
        block = 4 * d * d + 3 * d * h + 2 * d
        b["gathered"] = 2 * (2 * block + 2 * E * d) * cb
    else:
        b["parameters"], b["gradients"], b["optimizer"] = 4 * n, 4 * n * (2 if world > 1 else 1), 8 * n
        b["reference"] = n * cb if reference else 0
    T = micro_batch * seq_len
    per_block = T * (14 * d + 4 * h) * cb
    b["activations"] = (L * T * d * cb + per_block if grad_checkpointing else L * per_block) \
        + (T if logit_rows is None else logit_rows) * E * (cb + 8)
    b["total"] = sum(b.values())
    return b


def check_memory_budget(budget: dict, device) -> str:
    """The budget as one line of GiB; on a CUDA device whose memory is smaller than the total, raise with the
    numbers instead of running out of memory mid-step. On CPU nothing is checked."""
    gib = lambda x: f"{x / 2**30:.1f}"  # noqa: E731
    line = ("per-GPU memory budget (computed, GiB): " + " + ".join(f"{k.replace('_', ' ')} {gib(v)}"
            for k, v in budget.items() if k != "total" and v) + f" = {gib(budget['total'])}")
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        if budget["total"] > props.total_memory:
            raise MemoryError(f"{line}\nthis does not fit {props.name} ({gib(props.total_memory)} GiB): shard the "
                              "weights (--fsdp with --lora-r 0, more GPUs), --grad-checkpointing, a smaller "
                              "micro-batch, grad accumulation 1, or LoRA")
    return line
