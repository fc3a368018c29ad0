import pytest
import torch

from tests.reference_sampler import reference_generate
from model import LLaDA, preset_config
from sample import generate, num_transfer_tokens, propose


def prompts(tokenizer, texts):
    tokenizer.padding_side = "left"
    enc = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts],
                    return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def peaky(tokenizer, n_layers=2, seed=0, std=0.3):
    """A tiny random model with larger weights than the default init: confident, varied predictions."""
    return LLaDA(preset_config("tiny", tokenizer, n_layers=n_layers)).init_weights(seed=seed, std=std).eval()


class Recorder(torch.nn.Module):
    """Wraps the model and records the sequence it is called with at every denoising step."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inputs = model, model.config, []
        self.rope, self.head = model.rope, model.head

    def forward(self, x, attention_mask=None, **kw):
        self.inputs.append(x.clone())
        return self.model(x, attention_mask, **kw)


def test_schedule():
    assert num_transfer_tokens([10, 3], 4) == [[3, 3, 2, 2], [1, 1, 1, 0]]


def test_precomputed_rope_is_the_same_forward(tiny_model, tokenizer):
    ids, mask = prompts(tokenizer, ["a", "a longer prompt"])
    rope = tiny_model.rope(ids, mask)
    assert torch.equal(tiny_model(ids, mask, rope=rope), tiny_model(ids, mask))
    with pytest.raises(ValueError, match="rope is for"):
        tiny_model(ids[:, 1:], mask[:, 1:], rope=rope)


def test_invariants(tiny_model, tokenizer):
    ids, mask = prompts(tokenizer, ["sort 3 1 2", "hello"])
    mask_id = tiny_model.config.mask_token_id
    rec = Recorder(tiny_model)
    G, bl, steps = 16, 8, 8  # 2 blocks, 4 steps per block, 2 tokens per step
    out = generate(rec, ids, mask, steps=steps, gen_length=G, block_length=bl, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, ids.shape[1] + G)
    assert (out[:, :ids.shape[1]] == ids).all()
    assert not (out == mask_id).any()
    states = rec.inputs + [out]
    assert len(rec.inputs) == steps
    for before, after in zip(states, states[1:]):
        committed = (before != mask_id)
        assert (after[committed] == before[committed]).all()  # never changes a committed token
        newly = (before == mask_id) & (after != mask_id)
        assert newly.sum(1).tolist() == [2, 2]  # exactly the scheduled number per step


def test_deterministic(tiny_model, tokenizer):
    ids, mask = prompts(tokenizer, ["a", "bcd"])
    kw = dict(steps=8, gen_length=16, block_length=8)
    torch.testing.assert_close(generate(tiny_model, ids, mask, **kw), generate(tiny_model, ids, mask, **kw))
    s1 = generate(tiny_model, ids, mask, temperature=0.9, generator=torch.Generator().manual_seed(3), **kw)
    s2 = generate(tiny_model, ids, mask, temperature=0.9, generator=torch.Generator().manual_seed(3), **kw)
    s3 = generate(tiny_model, ids, mask, temperature=0.9, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)


@pytest.mark.parametrize("temperature,remasking,threshold,rule", [
    (0.0, "low_confidence", None, "fixed-floor"), (1.0, "low_confidence", None, "fixed-floor"),
    (1.0, "random", None, "fixed-floor"), (1.0, "low_confidence", 0.2, "fixed-floor"),
    (1.0, "low_confidence", 0.2, "any")])
def test_batched_equals_alone(tokenizer, temperature, remasking, threshold, rule):
    """Keyed draws: a row's completion depends on its own generator only, not on its batch-mates (so N processes
    give what 1 process gives), also when rows finish a block at different steps (threshold)."""
    model = peaky(tokenizer)
    texts = ["x", "a longer prompt", "mid one"]
    ids, mask = prompts(tokenizer, texts)
    kw = dict(steps=8, gen_length=16, block_length=4, temperature=temperature, remasking=remasking,
              threshold=threshold, threshold_rule=rule)
    batched = generate(model, ids, mask, generator=[torch.Generator().manual_seed(100 + i) for i in range(3)], **kw)
    for i in range(3):
        real = ids[i][mask[i].bool()][None]
        alone = generate(model, real, generator=[torch.Generator().manual_seed(100 + i)], **kw)
        assert torch.equal(batched[i, -16:], alone[0, -16:])


@pytest.mark.parametrize("G,bl,steps", [(16, 16, 16), (16, 4, 8), (12, 4, 6), (8, 8, 3)])
def test_greedy_equals_reference(tiny_model, tokenizer, G, bl, steps):
    """Token for token the literal reference, one prompt and a left-padded batch with its padding mask, on the
    default tiny model, a confident one, and one with a 4k vocabulary whose near-uniform confidences differ by
    ~1e-6 relative (the hardest case for the fp32 confidence)."""
    flat = LLaDA(preset_config("tiny", tokenizer, vocab_size=4000, embedding_size=4000)).init_weights(seed=1).eval()
    for model in [tiny_model, peaky(tokenizer), flat]:
        for texts in [["what is 3+4?"], ["z"], ["what is 3+4?", "z", "mid one"]]:
            ids, mask = prompts(tokenizer, texts)
            ours = generate(model, ids, mask, steps=steps, gen_length=G, block_length=bl)
            ref = reference_generate(model, ids, steps=steps, gen_length=G, block_length=bl, attention_mask=mask)
            assert torch.equal(ours, ref)


# Greedy completions of the previous sampler (float64 Gumbel-max and confidences, per-row noise; commit
# b3ab36d) for peaky(n_layers, seed, std) on the 4 prompts below, steps 12, gen length 24, block 8.
PREVIOUS = {  # (n_layers, seed, std, cfg_scale, cache, threshold (rule "any")): the 4 decoded completions
    (2, 0, 0.3, 0.0, 'none', None): [
        "gggg<answer><answer><answer>q<qqqqqqq<<qZ999;",
        "ggggggggggggggg<answer>g<qg<answer>Wg(",
        "<answer>g<qqqgq^^\"qZk>\"GG\"\"TTTT",
        "gg<answer><answer><answer><answer>g<bOOOb\"}Vkk%k5,|k",
    ],
    (2, 0, 0.3, 0.0, 'prefix', None): [
        "gggg<answer><answer><answer>qqqqq<qqq;<Z6;;</reasoning>;",
        "ggggggggggggggg<answer>g<gO<answer>hY(",
        "<answer><<qqqgqc8\"qZk6\"`\"ZTTTT^",
        "gg<answer><answer><answer><answer>gqbbOObbYuuyc*(\\cc",
    ],
    (2, 0, 0.3, 0.0, 'dual', None): [
        "gggg<answer><answer><answer>qqqqq<qqq;<Z6;;</reasoning>;",
        "ggggggggggggggg<answer>g<gO<answer>hY(",
        "<answer><<qqqgqc8\"qZk6\"`\"ZTTTT^",
        "gg<answer><answer><answer><answer>gqbbOObbYuuyc*(\\cc",
    ],
    (2, 0, 0.3, 0.0, 'none', 0.5): [
        "gggg<answer><answer><answer>q<qqqqqqq<<2Z999;",
        "gIggggggggXAg<q<answer>=<`I<answer><answer>`&",
        "<answer>g<qqqgqc8\"qZk6\"\"\"ZTTTTS",
        "g<answer><answer><answer><answer><answer>g<bOOe<\"\"{+\"*==&&A",
    ],
    (2, 0, 0.3, 1.0, 'none', None): [
        "ggg<answer><answer><answer><answer>ggqqgWWx-qqqWqqqq",
        "gIqgggggg<answer>XXXxIq<Od1;IOs",
        "<answer>v\ngCgIv*8ZZZrT\"ZZZTTTT<answer>",
        "g<answer><answer><answer><answer><answer><answer>-`````^^```^^)^^^",
    ],
    (1, 1, 0.5, 0.0, 'dual', 0.5): [
        "bAA&bbkfHgg&sZHg&&MTH&&M",
        "ZkA8TZZkTTTg&Q=TTH&QQ&TT",
        "\n<|startoftext|><|startoftext|>--kk<|startoftext|><|startoftext|>---kkkQZZkkk-Wk",
        "HAH&ZHZA&&&&HH&&&&HHH&&&",
    ],
    (1, 1, 0.5, 1.0, 'none', 0.5): [
        "bTTjbW!f7WWttx;Wkk ==Zkt",
        "Z<|startoftext|>\"80WZ<|startoftext|>AA-GZN--vg&kkHv&",
        "2jj-Wkk<|startoftext|>jjGGWkkVZZuZQ/77",
        "<|startoftext|>< jWH;<jkZ]/;kkZBMMkkZZ",
    ],
    (4, 2, 0.1, 0.0, 'none', None): [
        ":::::::::::Y{:::YYYYY::Y",
        ":::::::::{::::Y{YYYYYSSY",
        ":::::::::::SSS::YYSS:::Y",
        ":::::::::::<unk><unk>:::YYYWY:YY",
    ],
    (4, 2, 0.1, 0.0, 'dual', 0.5): [
        ":::::::::::::::::YYY::::",
        "::::::::::::::::YYYYYS<unk><unk>",
        "::::::::::::::::::SS::::",
        "::::::::::::::::<unk>Y<unk><unk><unk><unk><unk><unk>",
    ],
}


@pytest.mark.parametrize("key", list(PREVIOUS))
def test_greedy_unchanged_from_previous_sampler(tokenizer, key):
    n_layers, seed, std, cfg, cache, threshold = key
    model = peaky(tokenizer, n_layers, seed, std)
    ids, mask = prompts(tokenizer, ["sort 3 1 2", "z", "what is 12 + 30?", "hello there"])
    out = generate(model, ids, mask, steps=12, gen_length=24, block_length=8, cfg_scale=cfg, cache=cache,
                   threshold=threshold, threshold_rule="any")
    assert [tokenizer.decode(row) for row in out[:, ids.shape[1]:]] == PREVIOUS[key]


def test_proposals_of_the_mask_token_stay_masked(tokenizer):
    """A model that often proposes [MASK] itself: committing it leaves the position masked (as in the reference),
    and each row's noise and gathered positions still follow its own masked positions: batched == one at a time.
    (The reference also re-proposes such leftovers of EARLIER blocks; this sampler, like its previous version,
    proposes only the current block. A trained LLaDA does not propose [MASK].)"""
    model = peaky(tokenizer)
    mask_id = model.config.mask_token_id
    ids, mask = prompts(tokenizer, ["x", "a longer prompt", "mid one"])
    with torch.no_grad():
        favourite = model(ids, mask).argmax(-1).flatten().mode().values  # the token the model proposes most
        w = model.transformer.ff_out.weight
        w[mask_id] = w[favourite]  # [MASK] ties with it (and wins greedy ties: the lower id)
    G = 16
    for T in [0.0, 1.0]:
        kw = dict(steps=8, gen_length=G, block_length=8, temperature=T)
        rec = Recorder(model)
        batched = generate(rec, ids, mask, generator=[torch.Generator().manual_seed(i) for i in range(3)], **kw)
        masks = torch.stack([(state == mask_id).sum(1) for state in rec.inputs + [batched]])  # (steps + 1, rows)
        assert ((masks[:-1] - masks[1:]) < 2).any()  # the case under test happened: a step unmasked fewer than 2
        for i in range(3):
            alone = generate(model, ids[i][mask[i].bool()][None], generator=[torch.Generator().manual_seed(i)], **kw)
            assert torch.equal(batched[i, -G:], alone[0, -G:])


@pytest.mark.parametrize("temperature", [0.5, 0.9, 2.0])
def test_proposals_follow_softmax_over_temperature(temperature):
    """Chi-square test of 200k draws of one position against softmax(l / T) (and, for power, against the law of
    a 10% different temperature, which it must reject)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 200_000
    noise = torch.rand(n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0, _ = propose(logits.expand(n, -1), temperature, noise)
    counts = torch.bincount(x0, minlength=6).double()

    def chi2(T):
        p = torch.softmax(logits.double() / T, 0)
        return ((counts - n * p) ** 2 / (n * p)).sum().item()
    assert chi2(temperature) < 25.7  # 5 degrees of freedom: P(chi2 > 25.7) = 1e-4
    assert chi2(1.1 * temperature) > 100


def test_chunked_proposals_are_the_same(tokenizer, monkeypatch):
    """Rows proposed in chunks (a small sample.CHUNK_ELEMENTS) give the same completions: each row's noise is one
    call on its own generator whatever the chunking."""
    import sample
    model = peaky(tokenizer)
    ids, mask = prompts(tokenizer, ["x", "a longer prompt", "mid one"])
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=0.9, remasking="random")
    whole = generate(model, ids, mask, generator=[torch.Generator().manual_seed(i) for i in range(3)], **kw)
    monkeypatch.setattr(sample, "CHUNK_ELEMENTS", 3 * model.config.vocab_size)  # ~3 positions per chunk
    assert sample.row_chunks([4, 4, 4], model.config.vocab_size) == [(0, 1), (1, 2), (2, 3)]
    chunked = generate(model, ids, mask, generator=[torch.Generator().manual_seed(i) for i in range(3)], **kw)
    assert torch.equal(whole, chunked)


def test_confidence_is_the_log_softmax_of_the_proposal():
    """Against float64 log-softmax: peaked rows, and flat rows over LLaDA's 126k vocabulary (log-confidence ~ -11.7,
    where an fp32 logsumexp would be off by ~1e-6)."""
    g = torch.Generator().manual_seed(0)
    for logits in [torch.randn(64, 30, generator=g) * 3, torch.randn(8, 126464, generator=g) * 0.02]:
        n = logits.shape[0]
        for T in [0.0, 0.7]:
            x0, conf = propose(logits, T, torch.rand(logits.shape, dtype=torch.float64, generator=g))
            if T == 0:
                assert torch.equal(x0, logits.argmax(-1))
            ref = torch.log_softmax(logits.double(), -1).gather(-1, x0[:, None]).squeeze(1)
            torch.testing.assert_close(conf, ref, rtol=0, atol=3e-7)


def test_confidence_orders_near_certain_positions():
    """Margins of 20, 30 and 60 nats: fp32 softmax probabilities all round to 1.0 (a tie), float64 ones order the
    first two; the fp32 log-confidence orders all three."""
    logits = torch.zeros(3, 10)
    logits[:, 3] = torch.tensor([20.0, 30.0, 60.0])
    assert (torch.softmax(logits, -1)[:, 3] == 1).all()
    x0, conf = propose(logits, 0.0)
    assert (x0 == 3).all() and conf[0] < conf[1] < conf[2] < 0


def test_threshold_rules_model_calls(tiny_model, tokenizer):
    """On the unconfident tiny model (p ~ 1/V) a 0.9 threshold never fires: the fixed-floor rule then IS the
    fixed schedule (same calls, same tokens), the "any" rule commits one token per call (more calls)."""
    ids, mask = prompts(tokenizer, ["a", "bcd"])
    G, bl, steps = 16, 8, 4
    calls, outs = {}, {}
    for rule in ["fixed-floor", "any"]:
        rec = Recorder(tiny_model)
        outs[rule] = generate(rec, ids, mask, steps=steps, gen_length=G, block_length=bl, threshold=0.9,
                              threshold_rule=rule)
        calls[rule] = len(rec.inputs)
    assert calls == {"fixed-floor": steps, "any": G}
    assert torch.equal(outs["fixed-floor"], generate(tiny_model, ids, mask, steps=steps, gen_length=G, block_length=bl))


def test_fixed_floor_commits_at_least_the_schedule(tokenizer):
    model = peaky(tokenizer)
    ids, mask = prompts(tokenizer, ["sort 3 1 2", "hello"])
    mask_id, P, G, bl, steps = model.config.mask_token_id, ids.shape[1], 16, 8, 4  # 2 steps of 4 tokens per block
    rec = Recorder(model)
    out = generate(rec, ids, mask, steps=steps, gen_length=G, block_length=bl, threshold=0.3, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    states = rec.inputs + [out]
    assert len(rec.inputs) <= steps and not (out == mask_id).any()
    for before, after in zip(states, states[1:]):
        m = (before[:, P:] == mask_id).view(2, G // bl, bl).sum(2)  # (rows, blocks): masked positions
        b = int((m.sum(0) > 0).nonzero()[0])  # the block being decoded
        newly = ((before == mask_id) & (after != mask_id)).sum(1)
        assert (newly >= m[:, b].clamp(max=4)).all()  # at least the schedule's 4 (or what is left)


def test_bad_arguments(tiny_model, tokenizer):
    ids, _ = prompts(tokenizer, ["a"])
    with pytest.raises(ValueError, match="multiple of block_length"):
        generate(tiny_model, ids, steps=8, gen_length=10, block_length=4)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        generate(tiny_model, ids, steps=3, gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="non-empty"):
        generate(tiny_model, ids[:, :0], steps=4, gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="remasking"):
        generate(tiny_model, ids, steps=4, gen_length=8, block_length=4, remasking="nope")
    with pytest.raises(ValueError, match="threshold_rule"):
        generate(tiny_model, ids, steps=4, gen_length=8, block_length=4, threshold=0.9, threshold_rule="all")
    with pytest.raises(ValueError, match="generators for a batch"):
        generate(tiny_model, ids, steps=4, gen_length=8, block_length=4, generator=[torch.Generator()] * 2)


def test_rope_is_the_rotate_half_formula(tiny_model, tokenizer):
    """model.apply_rope (a roll and a signed sin) is bit for bit the textbook x * cos + rotate_half(x) * sin."""
    from model import apply_rope
    ids, mask = prompts(tokenizer, ["a", "a longer prompt"])
    cos, sin = tiny_model.rope(ids, mask)  # (B, 1, L, hd)
    half = cos.shape[-1] // 2
    angles_sin = sin[..., half:]  # sin(angles); the first half carries the rotation's minus sign
    assert torch.equal(sin[..., :half], -angles_sin) and torch.equal(cos[..., :half], cos[..., half:])
    x = torch.randn(2, 4, ids.shape[1], 2 * half, generator=torch.Generator().manual_seed(0))
    x1, x2 = x.chunk(2, dim=-1)
    textbook = x * cos + torch.cat([-x2, x1], dim=-1) * torch.cat([angles_sin, angles_sin], dim=-1)
    assert torch.equal(apply_rope(x, cos, sin), textbook)


def test_generate_runs_without_autograd(tokenizer):
    """Sampling never records a graph (no activation memory kept per step), in every mode, whoever calls it."""
    model = peaky(tokenizer)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.is_grad_enabled()))
    ids, mask = prompts(tokenizer, ["sort 3 1 2", "z"])
    for cache in ["none", "dual"]:
        out = generate(model, ids, mask, steps=4, gen_length=8, block_length=4, temperature=1.0, cache=cache,
                       generator=torch.Generator().manual_seed(0))
        assert not out.requires_grad
    assert seen and not any(seen) and torch.is_grad_enabled()
