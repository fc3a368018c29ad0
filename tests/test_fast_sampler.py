"""The sampler's opt-in fast modes: the KV cache mechanics (model.KVCache), cache="prefix"/"dual" and threshold
in sample.generate, and a smoke run of bench.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import KVCache, LLaDA, preset_config
from bench import SAMPLER_MODES
from sample import generate

ROOT = Path(__file__).resolve().parents[1]
# (cache, threshold). With peaky() weights confidences spread over 0.2-0.9, so a 0.4 threshold commits
# several tokens in some steps and one in others.
FAST_MODES = [("prefix", None), ("dual", None), ("none", 0.4), ("prefix", 0.4), ("dual", 0.4)]


def peaky(tokenizer, n_layers=2):
    """A tiny random model with larger weights than the default init: confident, varied predictions."""
    return LLaDA(preset_config("tiny", tokenizer, n_layers=n_layers)).init_weights(seed=0, std=0.3).eval()


def prompts(tokenizer, texts):
    tokenizer.padding_side = "left"
    enc = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts],
                    return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def noisy_state(ids, mask_id, gen_length, seed=0):
    """A left-padded prompt batch followed by a half-decoded completion: random tokens and MASKs."""
    g = torch.Generator().manual_seed(seed)
    comp = torch.randint(10, 60, (ids.shape[0], gen_length), generator=g)
    comp[torch.rand(comp.shape, generator=g) < 0.5] = mask_id
    return torch.cat([ids, comp], dim=1)


class Recorder(torch.nn.Module):
    """Wraps the model and rebuilds the full sequence the sampler holds at every model call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.states, self.windows = model, model.config, [], []
        self.rope, self.head = model.rope, model.head

    def forward(self, x, attention_mask=None, positions=None, kv_cache=None, **kw):
        if kv_cache is not None and kv_cache.filled:  # x holds positions [start, start + W) only
            state = self.states[-1].clone()
            state[:, kv_cache.start:kv_cache.start + x.shape[1]] = x
            self.windows.append((kv_cache.start, x.shape[1]))
        else:
            state = x.clone()
            self.windows.append((0, x.shape[1]))
        self.states.append(state)
        return self.model(x, attention_mask, positions=positions, kv_cache=kv_cache, **kw)


def test_cache_fill_is_the_plain_forward(tiny_model, tokenizer):
    ids, mask = prompts(tokenizer, ["hi", "a longer prompt"])
    x = noisy_state(ids, tiny_model.config.mask_token_id, 16)
    am = torch.cat([mask, torch.ones(2, 16, dtype=mask.dtype)], dim=1)
    kv = KVCache()
    filled = tiny_model(x, am, positions=slice(ids.shape[1], None), kv_cache=kv)
    torch.testing.assert_close(filled, tiny_model(x, am, positions=slice(ids.shape[1], None)), rtol=0, atol=0)
    assert len(kv.keys) == tiny_model.config.n_layers and kv.length == x.shape[1]


@pytest.mark.parametrize("window", ["prefix", "dual"])
def test_window_forward_from_the_same_state_equals_full_forward(tiny_model, tokenizer, window):
    """With a cache filled from the very state being decoded, recomputing only the block (+ suffix) gives the
    full forward's logits: RoPE offsets, left padding and the key mask are right."""
    ids, mask = prompts(tokenizer, ["x", "a much longer prompt"])
    P, G, bl = ids.shape[1], 24, 8
    x = noisy_state(ids, tiny_model.config.mask_token_id, G)
    am = torch.cat([mask, torch.ones(2, G, dtype=mask.dtype)], dim=1)
    full = tiny_model(x, am)  # (B, L, V)
    for b in range(G // bl):
        s, e = P + b * bl, P + (b + 1) * bl
        end = x.shape[1] if window == "prefix" else e
        kv = KVCache()
        tiny_model(x, am, positions=slice(s, e), kv_cache=kv)
        kv.start = s
        out = tiny_model(x[:, s:end], positions=slice(0, e - s), kv_cache=kv)
        torch.testing.assert_close(out, full[:, s:e], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside the cached sequence"):
        kv.start = x.shape[1] - 2
        tiny_model(x[:, :bl], kv_cache=kv)


def test_window_forward_uses_the_stored_keys(tiny_model, tokenizer):
    """After the state changed, the recomputed positions see the OLD keys/values of the other positions (the
    approximation the cache makes), so the logits differ from a full forward of the new state."""
    ids, mask = prompts(tokenizer, ["abc"])
    P, G = ids.shape[1], 16
    x0 = noisy_state(ids, tiny_model.config.mask_token_id, G)
    kv = KVCache()
    tiny_model(x0, kv_cache=kv)
    kv.start = P
    x1 = x0.clone()
    x1[:, P:] = 20  # the whole completion changes
    cached = tiny_model(x1[:, P:], kv_cache=kv)
    assert not torch.allclose(cached, tiny_model(x1)[:, P:], atol=1e-4)


@pytest.mark.parametrize("cache,threshold", FAST_MODES + [("none", None)])
def test_one_layer_cache_is_exact(tokenizer, cache, threshold):
    """With ONE layer the stored keys/values of a position depend only on its token, so a cache is exact as long
    as those tokens do not change, which the sampler guarantees: every cache mode must reproduce the no-cache
    sampler token for token (greedy and sampled, left-padded batch, classifier-free guidance)."""
    model = peaky(tokenizer, n_layers=1)
    ids, mask = prompts(tokenizer, ["sort 3 1 2", "z"])
    kw = dict(steps=12, gen_length=24, block_length=8, threshold=threshold)
    for extra in [dict(), dict(temperature=1.0), dict(cfg_scale=1.0)]:
        ref = generate(model, ids, mask, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw, **extra)
        out = generate(model, ids, mask, generator=[torch.Generator().manual_seed(i) for i in range(2)], cache=cache,
                       **kw, **extra)
        assert torch.equal(out, ref), (cache, threshold, extra)


@pytest.mark.parametrize("cache,threshold", FAST_MODES)
def test_fast_mode_invariants(tokenizer, cache, threshold):
    model = peaky(tokenizer)
    ids, mask = prompts(tokenizer, ["sort 3 1 2", "hello"])
    mask_id = model.config.mask_token_id
    rec = Recorder(model)
    P, G, bl, steps = ids.shape[1], 16, 8, 8  # 2 blocks, 4 steps per block, 2 tokens per step (without threshold)
    out = generate(rec, ids, mask, steps=steps, gen_length=G, block_length=bl, temperature=1.0,
                   generator=torch.Generator().manual_seed(0), threshold=threshold, cache=cache)
    assert (out[:, :P] == ids).all() and not (out == mask_id).any()
    states = rec.states + [out]
    block_of = [int((s[:, P:] != mask_id).sum(1).min()) // bl for s in rec.states]  # the block each call decodes
    for i, (before, after) in enumerate(zip(states, states[1:])):
        committed = before != mask_id
        assert (after[committed] == before[committed]).all()  # never changes a committed token
        newly = ((before == mask_id) & (after != mask_id)).sum(1)
        if threshold is None:
            assert newly.tolist() == [2, 2]  # the schedule
        else:
            assert newly.max() >= 1  # at least one token per step and row (while the row has masks)
        # Which positions the call ran: the whole sequence at a block's first call, then the block (+ suffix).
        s = P + block_of[i] * bl
        first = i == 0 or block_of[i] != block_of[i - 1]
        if cache == "none" or first:
            assert rec.windows[i] == (0, P + G)
        else:
            assert rec.windows[i] == (s, P + G - s if cache == "prefix" else bl)
    if threshold is None:
        assert len(rec.states) == steps
    else:
        assert len(rec.states) < G  # parallel decoding: fewer calls than tokens


@pytest.mark.parametrize("cache,threshold", FAST_MODES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_fast_modes_batched_equals_alone(tokenizer, cache, threshold, temperature):
    tiny_model = peaky(tokenizer)
    texts = ["x", "a longer prompt", "mid one"]
    ids, mask = prompts(tokenizer, texts)
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=temperature, threshold=threshold, cache=cache)
    batched = generate(tiny_model, ids, mask, generator=[torch.Generator().manual_seed(100 + i) for i in range(3)], **kw)
    for i in range(3):
        real = ids[i][mask[i].bool()][None]
        alone = generate(tiny_model, real, generator=[torch.Generator().manual_seed(100 + i)], **kw)
        assert torch.equal(batched[i, -16:], alone[0, -16:])


def test_bad_cache_argument(tiny_model, tokenizer):
    ids, _ = prompts(tokenizer, ["a"])
    with pytest.raises(ValueError, match="cache must be one of"):
        generate(tiny_model, ids, steps=4, gen_length=8, block_length=4, cache="full")


def test_bench_sampler_runs(tmp_path):
    (tmp_path / "p.txt").write_text("what is 2+2?\nhi\n")
    small = ["--preset", "tiny", "--repeats", "1", "--warmup", "0", "--gen-length", "16", "--block-length", "8",
             "--steps", "8"]
    runs = [["sampler", *small, "--batch", "3"],
            ["sampler", *small, "--prompts", str(tmp_path / "p.txt"), "--modes", "exact,dual+threshold"]]
    for argv in runs:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
        res = subprocess.run([sys.executable, "bench.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=env)
        assert res.returncode == 0, res.stderr
        lines = [line for line in res.stdout.splitlines() if line.startswith("| ")]
        modes = argv[argv.index("--modes") + 1].split(",") if "--modes" in argv else SAMPLER_MODES
        assert lines[0].startswith("| mode |") and [line.split(" | ")[0][2:] for line in lines[2:]] == list(modes)
        exact = next(line for line in lines if line.startswith("| exact |"))
        assert "| 100.0 |" in exact  # the exact sampler agrees with itself
