"""LLaDA in plain PyTorch: config, network, HF checkpoint loading/saving, hand-written LoRA, tokenizer.

LLaDA is a masked diffusion LM: a Llama-like transformer WITHOUT a causal mask, trained to predict the
tokens hidden behind a [MASK] token. Everything the other scripts need from the model lives here:

    Config                 fields of the release `config.json` (+ presets: "tiny", "demo", "llada-8b")
    LLaDA                  the network; module names equal the checkpoint keys (minus the "model." prefix)
    KVCache                an approximate key/value cache for the sampler's fast modes (Fast-dLLM)
    LLaDA.from_pretrained  local folder (sharded or single file) or hub id; explicit key map, shape checks
    model.save_pretrained  the same HF layout back (shards + index + config.json [+ tokenizer])
    example_generator, row_uniforms, mask_tokens      the forward masking process, keyed randomness
    LoRALinear, apply_lora, lora_disabled, merge_lora, save_adapter, load_adapter   (PEFT file layout)
    param_count            parameters of a config, without building it (8.02B for the release)
    load_tokenizer, save_tokenizer, make_char_tokenizer

What a training run needs around the model (process group, checkpoints and resume, run folders, FSDP, the memory
budget) is in train_utils.py; the scripts' command-line plumbing is in cli.py.

Longer than the ~650 lines of the other stage files, on purpose: the network (~330 lines) comes with the two file
layouts it must read and write exactly (HF's sharded safetensors and PEFT's adapters), and splitting those off
would put a reader of from_pretrained one file away from the module names it maps.

No `trust_remote_code` is ever needed: we read the safetensors files ourselves. The official remote code can
load what `save_pretrained` writes: config.json carries an `auto_map` with local module names (so the official
configuration_llada.py and modeling_llada.py, copied beside it, load offline) and the weights' true
`torch_dtype`; adapters carry `task_type: CAUSAL_LM` for peft's AutoPeftModelForCausalLM.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# Config


AUTO_MAP = {  # config.json's pointers to the official remote code (module.Class, resolved in the model folder)
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}


@dataclasses.dataclass
class Config:
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    mlp_hidden_size: int = 12288
    vocab_size: int = 126464
    embedding_size: int = 126464  # rows of wte / ff_out; >= vocab_size (the release pads to a multiple)
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    bos_token_id: int = 126080
    extra: dict = dataclasses.field(default_factory=dict)  # other release fields, written back unchanged

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        if "embedding_size" not in known or known["embedding_size"] is None:
            known["embedding_size"] = known.get("vocab_size", cls.vocab_size)
        # The release calls the norm epsilon "rms_norm_eps"; older OLMo-style configs say "layer_norm_eps".
        if "rms_norm_eps" not in d and "layer_norm_eps" in d:
            known["rms_norm_eps"] = d["layer_norm_eps"]
        cfg = cls(**known, extra=extra)
        if cfg.d_model % cfg.n_heads != 0:
            raise ValueError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
        if cfg.n_kv_heads != cfg.n_heads:
            raise ValueError("LLaDA uses plain multi-head attention (n_kv_heads == n_heads); "
                             f"got n_kv_heads={cfg.n_kv_heads}, n_heads={cfg.n_heads}")
        return cfg

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Config":
        return cls.from_dict(read_json(path))

    def to_dict(self, dtype: torch.dtype | None = None) -> dict:
        """config.json's contents. dtype: the dtype of the weights written next to it (transformers loads them
        in `torch_dtype`); None leaves the field out (e.g. fp32 training shards that transformers never reads)."""
        d = {
            # Fields the official remote code (configuration_llada.py) expects, with the release's values.
            "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu",
            "block_type": "llama", "layer_norm_type": "rms", "include_bias": False, "include_qkv_bias": False,
            "weight_tying": False, "rope": True, "rope_full_precision": True, "alibi": False,
            "scale_logits": False, "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
            "mlp_ratio": self.mlp_hidden_size // self.d_model,
        }
        d.update(self.extra)  # a config we loaded keeps its own values for everything we do not model
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        # Local module names (not "GSAI-ML/LLaDA-8B-Instruct--modeling_llada...", which transformers fetches from
        # the hub even when the files sit beside it): transformers imports them from the model folder itself, so an
        # export loads offline once the official configuration_llada.py and modeling_llada.py are copied beside it
        # (README, "Hugging Face interop"). We never copy that code ourselves.
        d["auto_map"] = dict(AUTO_MAP)
        d.pop("dtype", None)  # transformers >= 5 writes "dtype" and prefers it: only the true value may remain
        d.pop("torch_dtype", None)
        if dtype is not None:
            d["torch_dtype"] = str(dtype).removeprefix("torch.")
        return d


PRESETS = {
    # The real architecture (LLaDA-8B-Base / -Instruct): 8.0B parameters.
    "llada-8b": dict(),
    # A model for unit tests: seconds on a CPU. Token ids come from the tokenizer (make_char_tokenizer).
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128, max_sequence_length=512),
    # The CPU demo model (~0.8M parameters with a character vocabulary).
    "demo": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden_size=384, max_sequence_length=512),
}


def preset_config(name: str, tokenizer=None, **overrides) -> Config:
    """A preset; with a tokenizer, the vocabulary size and special ids are taken from it."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    d = dict(PRESETS[name])
    if tokenizer is not None:
        ids = special_ids(tokenizer)
        d.update(vocab_size=len(tokenizer), embedding_size=len(tokenizer), **ids)
    d.update(overrides)
    return Config.from_dict(d)


# -----------------------------------------------------------------------------
# The network


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32 (bf16 sums of squares lose precision), cast back, then scale: the release's order.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """positions (B, L) integer -> cos, sin (B, 1, L, head_dim) in fp32 ("rotate half" layout), with the sign of
    the rotation folded into sin: sin = [-sin(angles), sin(angles)] (see apply_rope)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1)[:, None], torch.cat([-sin, sin], dim=-1)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, hd): x * cos + rotate_half(x) * sin(angles) in fp32, cast back. rotate_half(x) = [-x2, x1] for
    the halves x1, x2; written as roll(x) = [x2, x1] times the signed sin of rope_cos_sin: the same products
    bit for bit, without a negation and a cat per call."""
    xf = x.float()
    return (xf * cos + xf.roll(x.shape[-1] // 2, dims=-1) * sin).to(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block. Names = checkpoint keys: attn_norm, q/k/v_proj, attn_out, ff_norm,
    ff_proj (the SwiGLU GATE), up_proj, ff_out (the down projection)."""

    def __init__(self, cfg: Config):
        super().__init__()
        d, h = cfg.d_model, cfg.mlp_hidden_size
        self.n_heads = cfg.n_heads
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.ff_out = nn.Linear(h, d, bias=False)

    def forward(self, x, cos, sin, attn_mask, kv_cache: KVCache | None = None, layer: int = 0):
        B, L, D = x.shape
        a = self.attn_norm(x)
        # (B, L, D) -> (B, H, L, hd)
        q, k, v = (p(a).view(B, L, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:  # keys/values of the whole cached sequence (B, H, L_cache, hd)
            k, v = kv_cache.update(layer, k, v)
        # Bidirectional: no causal mask. attn_mask (B, 1, 1, L) bool, True = attend; None = attend to all.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, L, D))
        f = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(f)) * self.up_proj(f))


class OutputHead(nn.Linear):
    """The untied output head (checkpoint key `ff_out`), a Linear whose forward can run in fp32.

    fp32=True computes the logits in fp32 with autocast off, whatever the dtype of the weights and of `h`. Under
    bf16 autocast a plain Linear returns bf16 logits: at a magnitude of ~20 they are rounded by ~0.06, more than
    one RL update moves a log-probability, so the estimator's importance ratios would be rounding noise. The
    inputs of a bf16 run are bf16 values, so the fp32 product is exact for them (and TF32, 10 mantissa bits,
    holds them exactly too; diffu_grpo.py enables it on CUDA for bf16 runs). A method of the module, not of the
    model, so FSDP's hooks (which gather the sharded weight when the module is called) still run."""

    def forward(self, h: torch.Tensor, fp32: bool = False) -> torch.Tensor:
        if not fp32:
            return super().forward(h)
        with torch.autocast(h.device.type, enabled=False):
            return F.linear(h.float(), self.weight.float())


class KVCache:
    """Per-layer keys and values of a whole sequence, for the sampler's approximate caches (Fast-dLLM).

    A forward with an EMPTY cache runs the whole sequence (B, L) as usual and stores each layer's keys and
    values (after RoPE), the RoPE angles and the padding mask. A later forward passes only the tokens of the
    positions [start, start + W) of that sequence, input_ids (B, W), with `cache.start = start`: those positions
    are recomputed, their fresh keys/values overwrite the stored ones, and they attend to every position of the
    sequence (padding masked as stored). The other positions' keys/values are the stored ones, computed from the
    sequence as it was when the cache was filled: exact while those positions and everything they attend to
    are unchanged, an approximation after that (the sampler refreshes the cache once per block).
    Inference only (the stored tensors are updated in place)."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # per layer (B, H, L, hd)
        self.values: list[torch.Tensor] = []
        self.cos = self.sin = None  # (B, 1, L, hd) fp32
        self.attn_mask = None  # (B, 1, 1, L) bool or None
        self.start = 0  # first position of the tokens a forward with a filled cache is given

    @property
    def filled(self) -> bool:
        return bool(self.keys)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (filling) or overwrite (positions [start, start + W)) layer `layer`'s k, v (B, H, W, hd);
        return the keys and values of the whole sequence."""
        if layer == len(self.keys):  # filling: k, v cover the whole sequence
            self.keys.append(k)
            self.values.append(v)
            return k, v
        K, V = self.keys[layer], self.values[layer]
        K[:, :, self.start:self.start + k.shape[2]] = k
        V[:, :, self.start:self.start + v.shape[2]] = v
        return K, V


class LLaDA(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.embedding_size, cfg.d_model),
            blocks=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
            ff_out=OutputHead(cfg.d_model, cfg.embedding_size, bias=False),  # output head (untied)
        ))

    def init_weights(self, seed: int = 0, std: float = 0.02):
        """Random init for from-scratch training and random-weight benchmarks (normal, residual-scaled)."""
        # Drawn on the parameters' device (a model built directly on a GPU never round-trips through the CPU).
        device = next(self.parameters()).device
        g = torch.Generator(device).manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
                continue
            residual = ".blocks." in name and name.endswith(("attn_out.weight", "ff_out.weight"))
            s = std / math.sqrt(2 * self.config.n_layers) if residual else std  # GPT-2 style residual scaling
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g, device=device) * s)
        return self

    def rope(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """RoPE cos, sin (B, 1, L, head_dim) fp32 for the layout of input_ids (B, L) and attention_mask (B, L).
        Positions count real tokens only, so a left-padded prompt sees the same angles as unpadded. A caller that
        runs one layout many times (the sampler: every denoising step) computes them once and passes them as
        `rope=` to forward / hidden_states, instead of recomputing them in every call."""
        B, L = input_ids.shape
        if attention_mask is None:
            positions = torch.arange(L, device=input_ids.device).expand(B, L)
        else:
            positions = (attention_mask.bool().long().cumsum(-1) - 1).clamp(min=0)
        return rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      kv_cache: KVCache | None = None, rope: tuple | None = None) -> torch.Tensor:
        """input_ids (B, L), attention_mask (B, L) 1 = real token, 0 = padding -> final hidden (B, L, D).
        rope: self.rope(input_ids, attention_mask) computed once by the caller (None: computed here).
        kv_cache (sampler fast modes, see KVCache): empty = run as usual and fill it; filled = input_ids (B, W)
        are the tokens of positions [kv_cache.start, kv_cache.start + W) of the cached sequence, whose RoPE
        angles and padding mask come from the cache (attention_mask and rope are then ignored) -> (B, W, D)."""
        B, L = input_ids.shape
        if kv_cache is not None and kv_cache.filled:
            a = kv_cache.start
            if a < 0 or a + L > kv_cache.length:
                raise ValueError(f"positions [{a}, {a + L}) lie outside the cached sequence of length {kv_cache.length}")
            cos, sin = kv_cache.cos[:, :, a:a + L], kv_cache.sin[:, :, a:a + L]
            attn_mask = kv_cache.attn_mask  # keys: the whole cached sequence
        else:
            # (B, 1, 1, L): mask padding KEYS only; None = attend to all
            attn_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
            if rope is None:
                rope = self.rope(input_ids, attention_mask)
            elif rope[0].shape[0] != B or rope[0].shape[2] != L:
                raise ValueError(f"rope is for (B, L) = ({rope[0].shape[0]}, {rope[0].shape[2]}), input_ids are {(B, L)}")
            cos, sin = rope
            if kv_cache is not None:
                kv_cache.cos, kv_cache.sin, kv_cache.attn_mask = cos, sin, attn_mask
        x = self.transformer.wte(input_ids)
        for i, block in enumerate(self.transformer.blocks):
            if kv_cache is None and self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, attn_mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, attn_mask, kv_cache, i)
        return self.transformer.ln_f(x)

    def head(self, h: torch.Tensor, fp32: bool = False) -> torch.Tensor:
        """(..., D) -> logits (..., V). The 126k-wide output head: call it only where logits are needed.
        fp32=True: fp32 logits even under bf16 autocast (OutputHead; the RL estimator's log-probs)."""
        return self.transformer.ff_out(h, fp32=fp32)[..., : self.config.vocab_size]

    def forward(self, input_ids, attention_mask=None, positions: slice | torch.Tensor | None = None,
                return_hidden: bool = False, kv_cache: KVCache | None = None, rope: tuple | None = None):
        """Logits (B, L, V), or (B, P, V) for `positions` (a slice or 1-D index tensor along the sequence).
        return_hidden=True returns the final hidden states (B, P, D) instead, for callers that apply the head in
        chunks (going through forward keeps DDP/FSDP hooks intact). kv_cache, rope: see hidden_states; `positions`
        index the tokens passed in (with a filled cache: relative to kv_cache.start)."""
        h = self.hidden_states(input_ids, attention_mask, kv_cache, rope)
        if positions is not None:
            h = h[:, positions]
        return h if return_hidden else self.head(h)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- checkpoints ---------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, dtype: torch.dtype = torch.float32, device="cpu") -> "LLaDA":
        """Load an HF-layout checkpoint straight into `dtype` on `device` (one tensor at a time, no second copy)."""
        folder = resolve_checkpoint(path_or_hub_id)
        cfg = Config.from_json(folder / "config.json")
        with torch.device("meta"):
            model = cls(cfg)
        expected = {checkpoint_key(k): (k, p.shape) for k, p in model.state_dict().items()}
        state = {}
        for key, tensor in iter_safetensors(folder, device):
            if key not in expected:
                raise KeyError(f"unexpected tensor {key!r} in {folder} (not part of the LLaDA architecture)")
            name, shape = expected[key]
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"shape mismatch for {key!r} in {folder}: checkpoint has {tuple(tensor.shape)}, "
                                 f"config.json implies {tuple(shape)}")
            state[name] = tensor.to(dtype)
        missing = sorted(k for k, (name, _) in expected.items() if name not in state)
        if missing:
            raise KeyError(f"checkpoint {folder} is missing {len(missing)} tensor(s), e.g. {missing[:3]}")
        model.load_state_dict(state, assign=True, strict=True)
        return model

    def save_pretrained(self, folder: str | os.PathLike, tokenizer=None, max_shard_bytes: int = 5 * 2**30):
        """Write config.json + safetensors (one file, or shards + index) atomically. LoRA must be merged first."""
        with atomic_dir(folder) as tmp:
            self.write_files(tmp, tokenizer, max_shard_bytes)

    def write_files(self, folder: Path, tokenizer=None, max_shard_bytes: int = 5 * 2**30):
        if any(isinstance(m, LoRALinear) for m in self.modules()):
            raise ValueError("merge_lora(model) before save_pretrained (or save the adapter with save_adapter)")
        write_hf_files(folder, self.config, self.state_dict(), tokenizer, max_shard_bytes)


def write_hf_files(folder: Path, cfg: Config, state_dict: dict, tokenizer=None, max_shard_bytes: int = 5 * 2**30):
    """config.json + safetensors (one file, or shards + index) of a state dict with our keys, into `folder`.
    Shared by save_pretrained and the export of a sharded (FSDP) model, whose full state dict lives on rank 0."""
    from safetensors.torch import save_file
    tensors = {checkpoint_key(k): v.detach().contiguous().cpu() for k, v in state_dict.items()}
    shards, current, size = [], {}, 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = v
        size += nbytes
    shards.append(current)
    dtypes = {v.dtype for v in tensors.values() if v.is_floating_point()}
    if len(dtypes) != 1:
        raise ValueError(f"the weights to save have mixed dtypes {sorted(map(str, dtypes))}: cast the model to one "
                         "dtype first (config.json records one torch_dtype)")
    with open(folder / "config.json", "w") as f:
        json.dump(cfg.to_dict(dtype=dtypes.pop()), f, indent=2)
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, folder / name, metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in tensors.values())
        with open(folder / "model.safetensors.index.json", "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder)


def checkpoint_key(state_dict_key: str) -> str:
    """Our state-dict key -> the release's key: everything lives under the "model." prefix of LLaDAModelLM."""
    return "model." + state_dict_key


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name: what is not a local path may be a hub repository


def resolve_checkpoint(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder, or a hub id resolved to a local folder (downloaded when online, else from the cache).
    The hub's known failures (offline, unknown or gated repository, HTTP errors) become one line each, without
    the hub's chained tracebacks."""
    p = Path(path_or_hub_id)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} has no config.json: not an HF-layout checkpoint folder")
        return p
    if p.exists():
        raise NotADirectoryError(f"{p} is a file; expected a checkpoint folder (config.json + *.safetensors)")
    hub_id = str(path_or_hub_id)
    if not HUB_ID.fullmatch(hub_id):
        raise FileNotFoundError(f"no such checkpoint folder: {p}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except GatedRepoError:  # (a RepositoryNotFoundError: first)
        raise PermissionError(f"{hub_id!r} is gated on the Hugging Face hub: accept its terms on its hub page and "
                              "log in (`hf auth login`), or pass a local folder") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{hub_id!r} is neither a local folder nor a model on the Hugging Face hub (a "
                                "private one needs `hf auth login`)") from None
    except LocalEntryNotFoundError:  # offline (no network or HF_HUB_OFFLINE=1) and not in the local cache
        raise FileNotFoundError(f"{hub_id!r} is not a local folder and not in the Hugging Face cache, and the hub "
                                f"cannot be reached (offline?): download it once while online (`hf download "
                                f"{hub_id}`), or pass a local folder") from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConnectionError(f"could not fetch {hub_id!r} from the Hugging Face hub: {first}") from None


def iter_safetensors(folder: Path, device):
    """Yield (key, tensor) from model.safetensors or the shards of model.safetensors.index.json."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index)["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")
    for name in files:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing (listed in {index.name}): the copy or download is "
                                    "incomplete; copy or download the folder again")
        with open_safetensors(folder / name, device) as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike, device="cpu"):
    """safetensors' safe_open; a truncated or corrupt file is a one-line error that names it (safetensors itself
    says only "incomplete metadata" and the like)."""
    from safetensors import SafetensorError, safe_open
    try:
        f = safe_open(path, framework="pt", device=str(device))
    except SafetensorError as e:  # the header is checked on open: a cut-off file never gets further
        raise ValueError(f"{path} is not a complete safetensors file ({e}): it was probably cut off while copying "
                         "or downloading; copy or download it again") from None
    with f:
        yield f


def load_safetensors(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """Every tensor of one .safetensors file (safetensors.torch.load_file with open_safetensors' errors)."""
    with open_safetensors(path, device) as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def read_json(path: str | os.PathLike):
    """A JSON file of a checkpoint or adapter folder; a corrupt or cut-off file names itself."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): it is corrupt or was cut off while copying; copy or "
                         "download it again") from None


@contextlib.contextmanager
def atomic_dir(folder: str | os.PathLike):
    """Write a folder under a temporary name and swap it in at the end: a crash never leaves half a checkpoint."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(folder.name + f".old{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


# -----------------------------------------------------------------------------
# The forward (masking) process, shared by SFT and the RL log-prob estimator


def example_generator(*keys) -> torch.Generator:
    """A CPU generator seeded from a tuple such as (seed, step, global_example_index, inner_step).
    Keying randomness on the GLOBAL example index (never the rank) makes a batch split over N processes
    draw exactly the numbers one process would, and lets policy/old/reference passes reuse one mask."""
    digest = hashlib.sha256(repr(tuple(int(k) for k in keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def row_uniforms(gens: list[torch.Generator], attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) float32 uniforms; row i draws one number per REAL token (attention_mask 1) from gens[i], so the
    draws do not depend on how much padding the batch adds. Padding positions get 1.0 (never below p)."""
    u = torch.ones(attention_mask.shape, dtype=torch.float32)
    real = attention_mask.bool().cpu()
    for i, g in enumerate(gens):
        u[i, real[i]] = torch.rand(int(real[i].sum()), generator=g)
    return u.to(attention_mask.device)


def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, p: torch.Tensor | float, u: torch.Tensor, mask_id: int):
    """The forward process of masked diffusion: each maskable token becomes [MASK] with probability p.
    ids, maskable (bool), u (uniforms) all (B, L); p a float or (B,) per-row rates. Returns (noisy ids, masked)."""
    p = torch.as_tensor(p, dtype=u.dtype, device=u.device)
    masked = maskable & (u < (p[:, None] if p.dim() == 1 else p))
    return ids.masked_fill(masked, mask_id), masked


# -----------------------------------------------------------------------------
# LoRA (hand-written; files in the PEFT layout)

# Every Linear inside a block. The output head is also called ff_out, so targets only match inside blocks.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


class LoRALinear(nn.Module):
    """y = x W^T + scale * dropout(x) A^T B^T, with A (r, in) random, B (out, r) zero: at step 0 it IS the base.
    scale = alpha / r, or alpha / sqrt(r) with rslora (rank-stabilised LoRA, PEFT's use_rslora).
    Keeps `weight` under its own name, so the base checkpoint keys are unchanged. A/B stay fp32."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, generator=None,
                 rslora: bool = False):
        super().__init__()
        self.weight = base.weight  # frozen base weight (bf16 on GPU)
        self.weight.requires_grad_(False)
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scale = alpha / math.sqrt(r) if rslora else alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device, dtype=torch.float32))
        with torch.no_grad():  # U(-1/sqrt(in), 1/sqrt(in)): PEFT's default (kaiming_uniform with a=sqrt(5))
            bound = 1 / math.sqrt(base.in_features)
            self.lora_A.copy_(torch.rand(self.lora_A.shape, generator=generator) * 2 * bound - bound)
        self.dropout = nn.Dropout(dropout)
        self.disabled = False

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.disabled:
            return y
        a = self.dropout(x).to(self.lora_A.dtype)
        return y + (F.linear(F.linear(a, self.lora_A), self.lora_B) * self.scale).to(y.dtype)

    def merged_weight(self) -> torch.Tensor:
        return (self.weight.float() + self.scale * self.lora_B @ self.lora_A).to(self.weight.dtype)


def lora_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def apply_lora(model: LLaDA, r: int, alpha: float, dropout: float = 0.0, targets=LORA_TARGETS, seed: int = 0,
               rslora: bool = False) -> LLaDA:
    """Wrap the named Linear layers of every block in LoRALinear and freeze everything else."""
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; LLaDA blocks have {LORA_TARGETS}")
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)  # a local generator: the same A on every rank, no global reseeding
    for block in model.transformer.blocks:
        for name in targets:
            setattr(block, name, LoRALinear(getattr(block, name), r, alpha, dropout, generator=g, rslora=rslora))
    return model


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Run the base model (the frozen reference policy of the KL term) without a second copy of the weights."""
    mods = [m for _, m in lora_modules(model)]
    before = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield model
    finally:
        for m, b in zip(mods, before):
            m.disabled = b


def merge_lora(model: LLaDA) -> LLaDA:
    """Fold every adapter into its base weight and replace LoRALinear by a plain nn.Linear (in place)."""
    for block in model.transformer.blocks:
        for name in LORA_TARGETS:
            m = getattr(block, name)
            if isinstance(m, LoRALinear):
                lin = nn.Linear(m.weight.shape[1], m.weight.shape[0], bias=False, device=m.weight.device, dtype=m.weight.dtype)
                with torch.no_grad():
                    lin.weight.copy_(m.merged_weight())
                setattr(block, name, lin)
    return model


def peft_key(name: str, ab: str) -> str:
    """Our module name -> the key PEFT writes: base_model.model.<release module path>.lora_A.weight."""
    return f"base_model.model.{checkpoint_key(name)}.{ab}.weight"


def save_adapter(model: LLaDA, folder, base_model: str | None, tokenizer=None):
    """adapter_model.safetensors + adapter_config.json, loadable by `peft` (PeftModel.from_pretrained, or
    AutoPeftModelForCausalLM from the recorded base). base_model: the folder or hub id of the base weights the
    adapter applies to; None when they were never saved (a randomly initialised base): they are then written
    into folder/base and recorded there."""
    with atomic_dir(folder) as tmp:
        write_adapter_files(model, tmp, base_model, Path(folder), tokenizer)


# adapter_config.json keys that describe or INITIALISE an adapter: PEFT itself ignores them when it loads one.
_ADAPTER_INFO_KEYS = {
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping",
    "r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "exclude_modules", "init_lora_weights",
    "loftq_config", "eva_config", "corda_config", "lora_ga_config", "megatron_config", "megatron_core",
    "qalora_group_size", "ensure_weight_tying"}


def check_adapter_config(cfg: dict, folder) -> None:
    """Refuse, by name, every adapter_config.json option that changes what the adapter computes and that
    load_adapter does not implement (use_dora, rank_pattern/alpha_pattern, layers_to_transform, modules_to_save,
    bias, lora_bias, ...): applied as plain LoRA such an adapter gives plausible but wrong outputs. Unknown keys
    (newer PEFT) are refused likewise unless they hold an "off" value (null, false, empty, "none")."""
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{folder}: peft_type is {cfg.get('peft_type')!r}; only LoRA adapters (LORA) are supported")
    if not isinstance(cfg.get("r"), int) or cfg["r"] <= 0 or not isinstance(cfg.get("lora_alpha"), (int, float)):
        raise ValueError(f"{folder}: adapter_config.json needs a positive integer r and a number lora_alpha, got "
                         f"r={cfg.get('r')!r}, lora_alpha={cfg.get('lora_alpha')!r}")
    for key, value in cfg.items():
        if key not in _ADAPTER_INFO_KEYS and not (value is None or value is False or value in ("none", {}, [])):
            raise ValueError(f"{folder}: adapter_config.json sets {key}={json.dumps(value)}, which this LoRA loader "
                             "does not implement; merge the adapter with peft (merge_and_unload) and load the "
                             "merged model instead")


def write_adapter_files(model: LLaDA, folder: Path, base_model: str | None, final: Path | None = None,
                        tokenizer=None):
    """The adapter files into `folder` (its final name `final` when written under a temporary one). base_model
    None: the frozen base weights go into folder/base (HF layout, with the tokenizer) and are recorded as the base."""
    from safetensors.torch import save_file
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters to save")
    shapes = {(m.r, m.alpha, m.rslora) for _, m in mods}
    if len(shapes) != 1:
        raise ValueError(f"adapters with different (r, alpha, rslora) {sorted(shapes)} cannot share one "
                         "adapter_config.json")
    tensors = {}
    for name, m in mods:
        tensors[peft_key(name, "lora_A")] = m.lora_A.detach().contiguous().cpu()
        tensors[peft_key(name, "lora_B")] = m.lora_B.detach().contiguous().cpu()
    if base_model is None:  # never saved: the adapter alone would be useless, so it travels with its base
        base_state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
        (folder / "base").mkdir()
        write_hf_files(folder / "base", model.config, base_state, tokenizer)
        base_model = str((final or folder) / "base")
    m0 = mods[0][1]
    targets = sorted({name.rsplit(".", 1)[-1] for name, _ in mods})
    config = {
        # task_type CAUSAL_LM: what AutoPeftModelForCausalLM requires (LLaDAModelLM is registered for
        # AutoModelForCausalLM in the release's auto_map); PeftModel.from_pretrained accepts it too.
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": m0.r, "lora_alpha": m0.alpha,
        "lora_dropout": m0.dropout.p,
        # A regex, because PEFT matches plain names by suffix and "ff_out" is also the output head.
        "target_modules": rf".*blocks\.\d+\.({'|'.join(targets)})",
        "bias": "none", "base_model_name_or_path": base_model, "fan_in_fan_out": False,
        "use_rslora": m0.rslora, "use_dora": False, "inference_mode": True,
    }
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    with open(folder / "adapter_config.json", "w") as f:
        json.dump(config, f, indent=2)


def adapter_base(folder, base: str | None = None) -> str:
    """The base model an adapter was trained on (its adapter_config.json). An explicit `base` that names a
    different model is an error: an adapter applied to the wrong base gives plausible but wrong numbers."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} has no adapter_config.json: not a LoRA adapter folder")
    recorded = read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    if base is None:
        if not recorded:
            raise ValueError(f"{folder} does not record its base model: pass it explicitly")
        return recorded
    same = lambda a, b: a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())
    if recorded and not same(base, recorded):
        raise ValueError(f"adapter {folder} was trained on {recorded!r}, not {base!r}: drop the base argument "
                         "(the recorded base is used) or pass the recorded one")
    return base


def load_adapter(model: LLaDA, folder, dropout: float | None = None) -> LLaDA:
    """Apply LoRA as described by adapter_config.json and load its weights (every key and shape checked).
    Options that change the adapter's function and are not implemented are refused (check_adapter_config)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} has no adapter_config.json: not a LoRA adapter folder")
    cfg = read_json(folder / "adapter_config.json")
    check_adapter_config(cfg, folder)
    tensors = load_safetensors(folder / "adapter_model.safetensors")
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors})
    dropout = cfg.get("lora_dropout", 0.0) if dropout is None else dropout
    apply_lora(model, cfg["r"], cfg["lora_alpha"], dropout, targets, rslora=bool(cfg.get("use_rslora", False)))
    expected = set()
    for name, m in lora_modules(model):
        for ab in ("lora_A", "lora_B"):
            key = peft_key(name, ab)
            expected.add(key)
            if key not in tensors:
                raise KeyError(f"adapter {folder} is missing {key!r}")
            p = getattr(m, ab)
            if tensors[key].shape != p.shape:
                raise ValueError(f"shape mismatch for {key!r}: adapter has {tuple(tensors[key].shape)}, model wants {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(tensors[key])
    extra = set(tensors) - expected
    if extra:
        raise KeyError(f"adapter {folder} has tensors the model has no place for, e.g. {sorted(extra)[:3]}")
    return model


def param_count(cfg: Config) -> int:
    """Parameters of LLaDA(cfg), from the config alone: 8.02B for the release."""
    d, h, E = cfg.d_model, cfg.mlp_hidden_size, cfg.embedding_size
    return 2 * E * d + cfg.n_layers * (4 * d * d + 3 * d * h + 2 * d) + d


# -----------------------------------------------------------------------------
# Tokenizer

# LLaDA-8B-Instruct's chat template, written from its description: BOS, then each message as
# <|start_header_id|>role<|end_header_id|>\n\n content.strip() <|eot_id|>, and ALWAYS an assistant header at the end.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
# For tiny models trained from scratch: BOS, the user text, <|eot_id|>. Same special tokens, 20 fewer positions
# per prompt than the release template (the role headers carry no information for a one-turn task).
COMPACT_CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
FORMAT_TAGS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>"]
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def load_tokenizer(path_or_hub_id: str | os.PathLike):
    """The checkpoint folder's tokenizer.json as a PreTrainedTokenizerFast (LLaDA's tokenizer class).
    Not AutoTokenizer: transformers >= 5 reads config.json first, whose `auto_map` (so the official code can
    load our checkpoints) makes it ask whether to run remote code."""
    from transformers import PreTrainedTokenizerFast
    folder = Path(path_or_hub_id) if Path(path_or_hub_id).is_dir() else resolve_checkpoint(path_or_hub_id)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json")
    return PreTrainedTokenizerFast.from_pretrained(str(folder), trust_remote_code=False)


def save_tokenizer(tokenizer, folder: str | os.PathLike):
    """tokenizer.save_pretrained(folder), with a tokenizer_config.json that transformers 4 and 5 both read.
    transformers 5 writes `"tokenizer_class": "TokenizersBackend"` and the extra special tokens as a list under
    "extra_special_tokens"; transformers 4 (what the official LLaDA code was written for) knows neither. The
    release's own names (PreTrainedTokenizerFast, additional_special_tokens) mean the same to both."""
    tokenizer.save_pretrained(folder)
    path = Path(folder) / "tokenizer_config.json"
    cfg = read_json(path)
    if cfg.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(cfg.get("extra_special_tokens"), list):  # (a dict there means named tokens: both versions read it)
        cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens")
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def special_ids(tokenizer) -> dict:
    """The ids the model and sampler need, read from the tokenizer (126336 etc. for the release)."""
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("bos_token_id", "<|startoftext|>"), ("eos_token_id", "<|endoftext|>"), ("mask_token_id", "<|mdm_mask|>")]}
    ids["pad_token_id"] = ids["eos_token_id"]
    return ids


def make_char_tokenizer(alphabet: str | None = None, chat_template: str = None):
    """A character-level tokenizer with LLaDA's special tokens and chat template (or `chat_template`, e.g.
    COMPACT_CHAT_TEMPLATE for models trained from scratch), for tiny models and tests.
    Built with the `tokenizers` library; save it with save_tokenizer(tokenizer, folder) next to a checkpoint."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    if alphabet is None:
        alphabet = "\n" + "".join(chr(c) for c in range(32, 127))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ["<unk>"])}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="<unk>", mask_token="<|mdm_mask|>", additional_special_tokens=SPECIAL_TOKENS[3:])
    # The answer-format tags are single tokens: a tiny model then spends its positions on the answer itself.
    fast.add_tokens(FORMAT_TAGS)
    fast.chat_template = chat_template or CHAT_TEMPLATE
    return fast
