import pytest
import torch

from tests.reference_sampler import reference_generate
from sample import generate, num_transfer_tokens


def prompts(tokenizer, texts):
    tokenizer.padding_side = "left"
    enc = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts],
                    return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


class Recorder(torch.nn.Module):
    """Wraps the model and records the sequence it is called with at every denoising step."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inputs = model, model.config, []

    def forward(self, x, attention_mask=None, positions=None):
        self.inputs.append(x.clone())
        return self.model(x, attention_mask, positions=positions)


def test_schedule():
    assert num_transfer_tokens([10, 3], 4) == [[3, 3, 2, 2], [1, 1, 1, 0]]


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


@pytest.mark.parametrize("temperature,remasking", [(0.0, "low_confidence"), (1.0, "low_confidence"), (1.0, "random")])
def test_batched_equals_alone(tiny_model, tokenizer, temperature, remasking):
    texts = ["x", "a longer prompt", "mid one"]
    ids, mask = prompts(tokenizer, texts)
    kw = dict(steps=8, gen_length=16, block_length=4, temperature=temperature, remasking=remasking)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    batched = generate(tiny_model, ids, mask, generator=gens, **kw)
    for i in range(3):
        real = ids[i][mask[i].bool()][None]
        alone = generate(tiny_model, real, generator=[torch.Generator().manual_seed(100 + i)], **kw)
        assert torch.equal(batched[i, -16:], alone[0, -16:])


@pytest.mark.parametrize("G,bl,steps", [(16, 16, 16), (16, 4, 8), (12, 4, 6), (8, 8, 3)])
def test_greedy_equals_reference(tiny_model, tokenizer, G, bl, steps):
    for text in ["what is 3+4?", "z"]:
        ids, _ = prompts(tokenizer, [text])
        ours = generate(tiny_model, ids, steps=steps, gen_length=G, block_length=bl)
        ref = reference_generate(tiny_model, ids, steps=steps, gen_length=G, block_length=bl)
        assert torch.equal(ours, ref)


def test_cfg_and_threshold_run(tiny_model, tokenizer):
    ids, mask = prompts(tokenizer, ["a", "bb"])
    mask_id = tiny_model.config.mask_token_id
    out = generate(tiny_model, ids, mask, steps=8, gen_length=16, block_length=8, cfg_scale=1.5)
    assert not (out == mask_id).any()
    rec = Recorder(tiny_model)
    out = generate(rec, ids, mask, steps=16, gen_length=16, block_length=8, threshold=0.0)
    assert not (out == mask_id).any()
    assert len(rec.inputs) == 2  # threshold 0 commits a whole block per step


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
