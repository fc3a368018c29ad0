"""sft.py on CPU: the loss (prompt never a target, 1/t weighting, EOS padding as answer, split invariance) and
the script (loss goes down, exact resume, merged export, 2-process gloo run == 1-process run)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model import LLaDA, load_adapter, preset_config
from sft import draw_noise, encode_example, epoch_order, lr_at, main, make_batch, sft_loss
from tests.helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def encode(tokenizer, pairs, max_length=256):
    return [encode_example(tokenizer, p, a, max_length)[:2] for p, a in pairs]


PAIRS = [("sort 312", "123"), ("hello there", "a longer answer"), ("x", "yz"), ("sort 9517", "1579")]


class Spy(torch.nn.Module):
    """Records the noisy input and makes the final hidden states a leaf, to read the loss gradient w.r.t. them."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inputs = model, model.config, []

    def hidden_states(self, ids, attention_mask=None):
        self.inputs.append(ids.clone())
        self.h = self.model.hidden_states(ids, attention_mask).detach().requires_grad_()
        return self.h

    def head(self, h):
        return self.model.head(h)


def test_examples_prompt_is_never_masked_nor_a_target(tiny_model, tokenizer):
    cfg = tiny_model.config
    exs = encode(tokenizer, PAIRS[:2])
    ids, ans = make_batch(exs, max(len(e[0]) for e in exs) + 3, cfg.eos_token_id)
    for row, (_, n_prompt) in zip(ids, exs):  # the assistant header ends the prompt; the answer ends <|eot_id|> EOS..
        assert tokenizer.decode(row[:n_prompt]).endswith(HEADER)
        assert tokenizer.decode(row[n_prompt:]).startswith(("123<|eot_id|><|endoftext|>", "a longer answer<|eot_id|>"))
    assert encode_example(tokenizer, "sort 312", "123", 30)[2]  # cut at the answer end, and counted
    assert not encode_example(tokenizer, "sort 312", "123", 300)[2]

    t, u = draw_noise(0, 0, [0, 1], ans)
    assert (u[~ans] == 1).all()  # prompt uniforms are 1.0: never below any rate p <= 1
    spy = Spy(tiny_model)
    sft_loss(spy, ids, ans, torch.ones(2), torch.zeros_like(u), cfg.mask_token_id).backward()  # p = 1: mask all
    noisy = spy.inputs[0]
    assert torch.equal(noisy[~ans], ids[~ans]) and (noisy[ans] == cfg.mask_token_id).all()
    g = spy.h.grad.abs().sum(-1)  # (B, L): the loss depends on the output only at masked answer positions
    assert (g[~ans] == 0).all() and (g[ans] > 0).all()
    spy.inputs.clear()
    u = torch.where(ans, torch.rand(ans.shape, generator=torch.Generator().manual_seed(1)), 1.0)
    sft_loss(spy, ids, ans, torch.full((2,), 0.5), u, cfg.mask_token_id).backward()
    masked = spy.inputs[0] == cfg.mask_token_id
    assert 0 < masked.sum() < ans.sum() and not (masked & ~ans).any()
    assert ((spy.h.grad.abs().sum(-1) > 0) == masked).all()  # unmasked answer tokens are no targets either


def test_loss_matches_hand_computation_with_eos_targets(tiny_model, tokenizer):
    cfg, eps = tiny_model.config, 1e-3
    exs = encode(tokenizer, PAIRS[:2])
    L = max(len(e[0]) for e in exs) + 4  # both rows end with EOS padding
    ids, ans = make_batch(exs, L, cfg.eos_token_id)
    assert ans.sum(1).tolist() == [L - n for _, n in exs]  # normaliser = answer + <|eot_id|> + EOS padding
    t = torch.tensor([0.3, 0.7])
    u = torch.rand(2, L, generator=torch.Generator().manual_seed(0))
    u[:, -2:] = 0.0  # the last two EOS padding tokens of each row are masked
    loss = sft_loss(tiny_model, ids, ans, t, u, cfg.mask_token_id, eps=eps)

    p = eps + (1 - eps) * t
    masked = ans & (u < p[:, None])
    assert masked[:, -2:].all() and (ids[:, -2:] == cfg.eos_token_id).all()
    with torch.no_grad():
        logp = tiny_model(ids.masked_fill(masked, cfg.mask_token_id)).float().log_softmax(-1)  # (B, L, V)
    nll = -logp.gather(-1, ids[..., None]).squeeze(-1)  # (B, L)
    expected = ((nll * masked).sum(1) / p / ans.sum(1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_split_invariance(tiny_model, tokenizer):
    cfg = tiny_model.config
    exs = encode(tokenizer, PAIRS)
    L, idx = max(len(e[0]) for e in exs), [5, 17, 2, 9]  # global example indices
    ids, ans = make_batch(exs, L, cfg.eos_token_id)
    t, u = draw_noise(0, 3, idx, ans)
    full = sft_loss(tiny_model, ids, ans, t, u, cfg.mask_token_id)
    total = 0
    for s in (slice(0, 1), slice(1, 4)):
        ids2, ans2 = make_batch(exs[s], L, cfg.eos_token_id)
        t2, u2 = draw_noise(0, 3, idx[s], ans2)
        assert torch.equal(t2, t[s]) and torch.equal(u2, u[s])  # noise follows the example, not the batch
        total = total + sft_loss(tiny_model, ids2, ans2, t2, u2, cfg.mask_token_id, reduction="sum")
    torch.testing.assert_close(total / 4, full, rtol=1e-5, atol=1e-6)


def test_schedule_and_order():
    assert lr_at(0, 10, 1.0) == 1.0 and lr_at(5, 10, 1.0) == 0.5
    assert lr_at(0, 10, 1.0, warmup=2) == 0.5 and lr_at(2, 10, 1.0, warmup=2) == 1.0
    assert abs(lr_at(6, 10, 1.0, warmup=2, schedule="cosine") - 0.5) < 1e-12
    assert lr_at(9, 10, 1.0, schedule="constant") == 1.0
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1) != epoch_order(10, 0, 2)
    assert sorted(epoch_order(10, 0, 1)) == list(range(10))


# -----------------------------------------------------------------------------
# The script


def args_for(data, out, *extra):
    return ["--init-from-scratch", "tiny", "--data", str(data), "--out-dir", str(out), "--val-frac", "0.1",
            "--device", "cpu", "--dtype", "float32", *map(str, extra)]


def metrics(out, key="loss"):
    rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    return {r["step"]: r[key] for r in rows if key in r}, {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def test_training_reduces_loss(sort_jsonl, tmp_path):
    main(args_for(sort_jsonl, tmp_path, "--lora-r", 0, "--lr", 3e-3, "--epochs", 4, "--batch-size", 8,
                  "--grad-accum", 1, "--eval-every", 20))
    _, val = metrics(tmp_path)
    assert sorted(val) == [0, 20, 40] and val[40] < 0.7 * val[0]


@pytest.mark.parametrize("lora_r", [8, 0])
def test_resume_matches_uninterrupted_run_and_merge(sort_jsonl, tmp_path, tokenizer, lora_r):
    common = ("--lora-r", lora_r, "--lora-dropout", 0.05, "--lr", 1e-2 if lora_r else 1e-3, "--epochs", 1,
              "--batch-size", 4, "--grad-accum", 2, "--eval-every", 3)
    main(args_for(sort_jsonl, tmp_path / "a", *common, "--max-steps", 6, "--merge"))
    main(args_for(sort_jsonl, tmp_path / "b", *common, "--max-steps", 3))
    main(args_for(sort_jsonl, tmp_path / "b", *common, "--max-steps", 6, "--resume", "auto"))
    (la, va), (lb, vb) = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4, 5, 6]
    for s in la:
        assert abs(la[s] - lb[s]) < 1e-6, (s, la[s], lb[s])
    assert va == pytest.approx(vb, abs=1e-6)
    name = "adapter_model.safetensors" if lora_r else "model.safetensors"
    wa, wb = (load_file(tmp_path / r / "step-000006" / name) for r in "ab")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)

    # The merged export is a plain HF-layout model equal to base + adapter (full FT: to the checkpoint).
    if lora_r:
        adapted = load_adapter(LLaDA(preset_config("tiny", tokenizer)).init_weights(0), tmp_path / "a" / "step-000006")
    else:
        adapted = LLaDA.from_pretrained(tmp_path / "a" / "step-000006")
    adapted.eval()
    merged = LLaDA.from_pretrained(tmp_path / "a" / "merged").eval()
    ids = torch.tensor([tokenizer.encode("sort 321 and more")])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), adapted(ids), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_and_grad_checkpointing_run(sort_jsonl, tmp_path):
    main(args_for(sort_jsonl, tmp_path, "--lora-r", 8, "--lr", 1e-2, "--epochs", 1, "--max-steps", 2,
                  "--batch-size", 4, "--grad-accum", 1, "--eval-every", 0, "--dtype", "bfloat16",
                  "--grad-checkpointing"))
    losses, _ = metrics(tmp_path)
    assert sorted(losses) == [1, 2] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    adapter = load_file(tmp_path / "step-000002" / "adapter_model.safetensors")
    assert all(v.dtype == torch.float32 for v in adapter.values())  # fp32 adapters over bf16 base weights


def test_two_process_gloo_matches_one_process(sort_jsonl, tmp_path):
    common = ("--lora-r", 8, "--lora-dropout", 0, "--lr", 3e-3, "--epochs", 1, "--max-steps", 4, "--eval-every", 2)
    main(args_for(sort_jsonl, tmp_path / "one", *common, "--batch-size", 4, "--grad-accum", 1))
    torchrun(ROOT / "sft.py", *args_for(sort_jsonl, tmp_path / "two", *common, "--batch-size", 1, "--grad-accum", 2),
             timeout=180)
    (l1, v1), (l2, v2) = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    for s in l1:
        assert abs(l1[s] - l2[s]) < 1e-5, (s, l1[s], l2[s])
    assert v1 == pytest.approx(v2, abs=1e-5)
    # Gradient norms (before clipping) catch a wrong normaliser that Adam's scale invariance would hide.
    g1, g2 = metrics(tmp_path / "one", "grad_norm")[0], metrics(tmp_path / "two", "grad_norm")[0]
    assert g1 == pytest.approx(g2, rel=1e-4)
    # Adam turns float-rounding noise of near-zero gradient entries into up to O(lr) steps: compare at lr / 30.
    w1, w2 = (load_file(tmp_path / r / "step-000004" / "adapter_model.safetensors") for r in ("one", "two"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-4)


def test_dry_run_prints_d1s_plan(capsys, sort_jsonl):
    from sft import main
    main(["--dry-run"])  # s1K's 1,000 rows are known: no download, no model
    out = capsys.readouterr().out
    assert "optimizer steps   2,460 = 123 per epoch x 20 epochs" in out and "vs d1's recipe    the same" in out
    main(["--dry-run", "8", "--grad-accum", "1"])  # README's 8-GPU line: the same global batch of 8
    assert "global batch 8 = micro-batch 1 x grad accum 1 x 8" in capsys.readouterr().out
    main(["--data", str(sort_jsonl), "--dry-run", "2", "--batch-size", "4", "--grad-accum", "1", "--epochs", "3"])
    out = capsys.readouterr().out  # 96 rows: 95 train / 1 val, global batch 8 -> 11 steps per epoch
    assert "optimizer steps   33 = 11 per epoch x 3 epochs" in out and "--data " in out and "--epochs 3 (d1: 20)" in out
