import json
from pathlib import Path

import pytest
import torch

from diffu_grpo import completion_logprobs, completion_mask, group_advantages, grpo_loss, round_prompts
from model import apply_lora, example_generator, lora_disabled
from tests.helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]


def batch(tokenizer, model, n=4, G=6, seed=0):
    """Left-padded prompts of different lengths and random completions."""
    texts = ["a", "bcd efg", "hi", "0123456789"][:n]
    tokenizer.padding_side = "left"
    enc = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts],
                    return_tensors="pt", padding=True, add_special_tokens=False)
    comp = torch.randint(10, model.config.vocab_size, (n, G), generator=torch.Generator().manual_seed(seed))
    return enc["input_ids"], enc["attention_mask"], comp


def gens(seed, rows):
    return [example_generator(seed, i) for i in rows]


def test_estimator_equals_direct_computation(tiny_model, tokenizer):
    ids, am, comp = batch(tokenizer, tiny_model)
    mask_id, P = tiny_model.config.mask_token_id, ids.shape[1]
    logp = completion_logprobs(tiny_model, ids, am, comp, gens(7, range(4)), 0.5, mask_id)
    # the same mask, drawn by hand: one uniform per REAL prompt token from the row's generator
    x = torch.full((4, P + comp.shape[1]), mask_id)
    for i in range(4):
        g = example_generator(7, i)
        real = am[i].bool()
        u = torch.rand(int(real.sum()), generator=g)
        row = ids[i].clone()
        pos = real.nonzero().squeeze(1)
        row[pos[u < 0.5]] = mask_id
        x[i, :P] = row
    full_am = torch.cat([am, torch.ones_like(comp)], 1)
    logits = tiny_model(x, full_am).float()[:, P:]
    want = torch.log_softmax(logits, -1).gather(-1, comp[..., None]).squeeze(-1)
    torch.testing.assert_close(logp, want, rtol=1e-5, atol=1e-5)


def test_mask_depends_only_on_seed_and_global_index(tiny_model, tokenizer):
    ids, am, comp = batch(tokenizer, tiny_model)
    mask_id = tiny_model.config.mask_token_id
    whole = completion_logprobs(tiny_model, ids, am, comp, gens(3, range(4)), 0.15, mask_id)
    # split as two ranks / two micro-batches would: rows keep their global index -> same numbers
    halves = [completion_logprobs(tiny_model, ids[r], am[r], comp[r], gens(3, r), 0.15, mask_id)
              for r in ([0, 1], [2, 3])]
    torch.testing.assert_close(torch.cat(halves), whole, rtol=1e-5, atol=1e-5)
    again = completion_logprobs(tiny_model, ids, am, comp, gens(3, range(4)), 0.15, mask_id)
    assert torch.equal(again, whole)  # policy / old / reference passes see the same mask
    other = completion_logprobs(tiny_model, ids, am, comp, gens(4, range(4)), 0.15, mask_id)
    assert not torch.equal(other, whole)  # another inner step, another mask


def test_completion_mask():
    eos = 1
    c = torch.tensor([[5, 6, 1, 1, 1], [5, 5, 5, 5, 5], [1, 7, 1, 8, 8]])
    assert completion_mask(c, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_advantages():
    r = torch.tensor([1.0, 0.0, 2.0, 5.0, 5.0, 5.0])
    a = group_advantages(r, 3)
    torch.testing.assert_close(a, torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0, 0.0]))
    s = group_advantages(r, 3, scale=True)
    assert torch.allclose(s[:3], torch.tensor([0.0, -1.0, 1.0]), atol=1e-3) and s[3:].abs().max() == 0


def lora_model(tiny_model):
    m = apply_lora(tiny_model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return m


def test_first_inner_step_is_plain_policy_gradient(tiny_model, tokenizer):
    m = lora_model(tiny_model).train()
    ids, am, comp = batch(tokenizer, m)
    mask_id = m.config.mask_token_id
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75])
    cm = torch.ones_like(comp, dtype=torch.float32)
    cm[1, 3:] = 0
    with torch.no_grad():  # the old policy, batched differently (as the no_grad pass of a real step)
        old = torch.cat([completion_logprobs(m, ids[r], am[r], comp[r], gens(9, r), 0.15, mask_id)
                         for r in ([0], [1, 2, 3])])
    logp = completion_logprobs(m, ids, am, comp, gens(9, range(4)), 0.15, mask_id)
    torch.testing.assert_close(torch.exp(logp - old), torch.ones_like(logp), rtol=0, atol=1e-5)  # ratio = 1
    loss, _ = grpo_loss(logp, old, None, adv, cm, eps=0.2, beta=0.0, normalizer=cm.sum())
    params = [p for p in m.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(loss, params)
    logp2 = completion_logprobs(m, ids, am, comp, gens(9, range(4)), 0.15, mask_id)
    pg = -(adv[:, None] * logp2 * cm).sum() / cm.sum()  # REINFORCE with the same normaliser
    g2 = torch.autograd.grad(pg, params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tied_group_gives_no_gradient_and_kl_zero_at_reference(tiny_model, tokenizer):
    m = apply_lora(tiny_model, r=4, alpha=8, dropout=0.0).train()  # B = 0: policy == reference
    ids, am, comp = batch(tokenizer, m)
    mask_id = m.config.mask_token_id
    adv = group_advantages(torch.tensor([0.5, 0.5, 0.5, 0.5]), 4)  # one group, all rewards tied
    cm = torch.ones_like(comp, dtype=torch.float32)
    logp = completion_logprobs(m, ids, am, comp, gens(1, range(4)), 0.15, mask_id)
    with torch.no_grad(), lora_disabled(m):
        ref = completion_logprobs(m, ids, am, comp, gens(1, range(4)), 0.15, mask_id)
    loss, stats = grpo_loss(logp, logp.detach(), ref, adv, cm, eps=0.5, beta=0.04, normalizer=cm.sum())
    assert abs(stats["kl"]) < 1e-6
    grads = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad])
    assert max(g.abs().max() for g in grads) < 1e-8


def test_step_prompts_cover_epochs():
    seen = [i for s in range(5) for i in round_prompts([10], s, 4, seed=0)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))


def test_mixed_tasks_get_equal_shares():
    # task 0 has 3 prompts (indices 0-2), task 1 has 100 (indices 3-102): every step takes 2 of each
    steps = [round_prompts([3, 100], s, 4, seed=0) for s in range(6)]
    assert all(sum(i < 3 for i in st) == 2 for st in steps)
    small = [i for st in steps for i in st if i < 3]
    assert sorted(small[:3]) == [0, 1, 2] and sorted(small[3:6]) == [0, 1, 2]  # whole epochs of the small task


# ----------------------------------------------------------------------------- the script, end to end


@pytest.fixture(scope="module")
def sudoku_csv(tmp_path_factory):
    import data
    return data.write_sudoku_csv(tmp_path_factory.mktemp("grpo") / "sudoku.csv",
                                 data.generate_sudoku(40, blanks=(4, 8), seed=0))


def grpo_args(csv_path, out, *extra):
    return ["--init", "tiny", "--task", "sudoku", "--train-path", str(csv_path), "--style", "compact",
            "--gen-length", "16", "--block-length", "8", "--diffusion-steps", "8", "--prompts-per-step", "2",
            "--num-generations", "4", "--micro-batch-size", "2", "--lora-r", "4", "--lora-alpha", "8",
            "--eval-every", "0", "--out-dir", str(out), "--random-reward", "--lr", "1e-2",
            *extra]


def adapter(folder):
    from safetensors.torch import load_file
    return load_file(Path(folder) / "adapter_model.safetensors")


def metrics(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]


@pytest.mark.parametrize("mu,beta", [(1, 0.0), (1, 0.04), (2, 0.0), (2, 0.04)])
def test_script_runs_and_learns_something(sudoku_csv, tmp_path, mu, beta):
    from diffu_grpo import main
    main(grpo_args(sudoku_csv, tmp_path, "--max-steps", "2", "--mu", str(mu), "--beta", str(beta)))
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and [r["round"] for r in rows] == ([1, 2] if mu == 1 else [1, 1])
    assert rows[0]["grad_norm"] > 0  # the random reward has spread: a real gradient
    assert rows[0]["lr"] == 0 and rows[1]["lr"] == 1e-2  # d1's warmup: 1 step, HF's formula (lr 0 at the first)
    assert rows[0]["ratio"] == 1.0 and rows[0]["clip_frac"] == 0.0  # inner step 0: old log-probs = the policy's
    a = adapter(tmp_path / "step-000002")
    assert max(v.abs().max() for k, v in a.items() if "lora_B" in k) > 0  # adapters moved


def test_steps_count_optimizer_steps(sudoku_csv, tmp_path, monkeypatch):
    """--max-steps 6 --mu 3: exactly 6 AdamW steps from 2 rollout rounds (issue: d1's step unit)."""
    import diffu_grpo
    calls = {"rollout": 0, "adamw": 0}
    rollout, adamw_step = diffu_grpo.rollout, torch.optim.AdamW.step

    def counting_rollout(*a, **k):
        calls["rollout"] += 1
        return rollout(*a, **k)

    def counting_step(self, *a, **k):
        calls["adamw"] += 1
        return adamw_step(self, *a, **k)
    monkeypatch.setattr(diffu_grpo, "rollout", counting_rollout)
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    diffu_grpo.main(grpo_args(sudoku_csv, tmp_path, "--max-steps", "6", "--mu", "3", "--save-every", "4"))
    assert calls == {"rollout": 2, "adamw": 6}
    rows = metrics(tmp_path)
    assert [(r["step"], r["round"], r["inner"]) for r in rows] == [(s + 1, s // 3 + 1, s % 3) for s in range(6)]
    assert ["reward" in r for r in rows] == [True, False, False] * 2  # round statistics: on a round's first step
    # --save-every 4 is not a multiple of mu: the first round reaching step 4 ends at step 6 (also the end)
    assert [p.name for p in sorted(tmp_path.glob("step-*"))] == ["step-000006"]


def test_rollout_cache_flags_reach_the_sampler_and_its_cost_is_logged(sudoku_csv, tmp_path):
    """--cache dual --cache-refresh 1 rolls out exactly the exact sampler's completions; gen_calls and
    gen_positions log the sampler's cost per round: 8 completions, 2 blocks x 4 calls, full forwards of the
    (8, L) batch, or with a refresh every 2 calls 2 full and 2 block-only (8 x 8 positions) calls per block."""
    import diffu_grpo
    runs = {}
    for name, extra in [("exact", []), ("refresh1", ["--cache", "dual", "--cache-refresh", "1"]),
                        ("refresh2", ["--cache", "dual", "--cache-refresh", "2"])]:
        diffu_grpo.main(grpo_args(sudoku_csv, tmp_path / name, "--max-steps", "1", "--mu", "1", *extra))
        runs[name] = metrics(tmp_path / name)[0]
    exact, refresh1, refresh2 = runs["exact"], runs["refresh1"], runs["refresh2"]
    assert exact["gen_calls"] == refresh1["gen_calls"] == refresh2["gen_calls"] == 8
    L = exact["gen_positions"] / (8 * 8)  # prompt + completion length of the rollout batch
    assert L == int(L) and L > 16
    assert refresh2["gen_positions"] == 2 * 8 * (2 * L + 2 * 8)
    for key in ("reward", "reward_std", "completion_len", "gen_positions", "loss"):
        assert refresh1[key] == exact[key], key


def test_dry_run_prints_d1s_plan_without_loading(capsys, monkeypatch):
    import diffu_grpo
    monkeypatch.setattr(diffu_grpo, "build_model", lambda *a, **k: pytest.fail("--dry-run loaded the model"))
    monkeypatch.setattr(diffu_grpo.data, "load_tasks", lambda *a, **k: pytest.fail("--dry-run loaded data"))
    diffu_grpo.main(["--task", "gsm8k", "--dry-run", "8"])
    out = capsys.readouterr().out
    assert "8 processes" in out and "optimizer steps   7,700, mu=12" in out
    assert "rollout rounds    642 (the last runs 8 of its 12 steps)" in out
    assert "prompts           10,272 = 1.42 epochs of 7,217 training prompts" in out
    assert "= 96 completions (12 per process)" in out  # 16 prompts x 6 over 8 ranks
    assert "vs d1's recipe    the same" in out
    diffu_grpo.main(["--task", "sudoku", "--dry-run", "1", "--mu", "4", "--lr", "1e-5"])
    out = capsys.readouterr().out
    assert "rollout rounds    950" in out and "--mu 4 (d1: 8)" in out and "--lr 1e-05 (d1: 3e-06)" in out


def test_resume_continues_identically(sudoku_csv, tmp_path):
    """Checkpoints at round ends reached by a --save-every that is not a multiple of mu; resume is exact."""
    import shutil
    from diffu_grpo import main
    common = ("--mu", "3", "--save-every", "2", "--warmup-steps", "2")
    main(grpo_args(sudoku_csv, tmp_path / "full", "--max-steps", "9", *common))
    assert [p.name for p in sorted((tmp_path / "full").glob("step-*"))] == ["step-000003", "step-000006",
                                                                           "step-000009"]
    main(grpo_args(sudoku_csv, tmp_path / "cut", "--max-steps", "6", *common))
    shutil.rmtree(tmp_path / "cut" / "step-000006")  # a crash after logging steps 4-6, before their checkpoint
    main(grpo_args(sudoku_csv, tmp_path / "cut", "--max-steps", "9", *common, "--resume", "auto"))
    full, cut = metrics(tmp_path / "full"), metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == list(range(1, 10))
    for a, b in zip(full, cut):
        assert a.keys() == b.keys() and a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lr"] == b["lr"]
        assert a.get("reward") == b.get("reward")
    for k, v in adapter(tmp_path / "full" / "step-000009").items():
        torch.testing.assert_close(adapter(tmp_path / "cut" / "step-000009")[k], v)


def test_resume_from_a_checkpoint_inside_a_round_warns(sudoku_csv, tmp_path, capsys):
    from diffu_grpo import main
    main(grpo_args(sudoku_csv, tmp_path, "--max-steps", "4", "--mu", "3"))  # rounds: steps 1-3, then step 4 only
    main(grpo_args(sudoku_csv, tmp_path, "--max-steps", "6", "--mu", "3", "--resume", "auto"))
    assert "ended inside its last round" in capsys.readouterr().err
    rows = metrics(tmp_path)
    assert [(r["step"], r["round"]) for r in rows] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 3), (6, 3)]


def test_estimator_passes_agree_and_rl_has_no_dropout(sudoku_csv, tiny_dir, tmp_path):
    """With the learning rate at 0 the policy never moves: the ratio must be 1 at EVERY inner step, though the
    old-policy pass runs without grad in another mode; and it is exactly 1 at inner step 0. The SFT adapter the
    run starts from was trained with LoRA dropout 0.05: none of it may reach the RL passes."""
    import diffu_grpo
    from model import LLaDA, LoRALinear, save_adapter
    sft = apply_lora(LLaDA.from_pretrained(tiny_dir), r=2, alpha=4, dropout=0.05)
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    save_adapter(sft, tmp_path / "sft-adapter", base_model=str(tiny_dir))
    args = grpo_args(sudoku_csv, tmp_path / "rl", "--max-steps", "3", "--mu", "3", "--lr", "0", "--beta", "0.04")
    args[args.index("tiny")] = str(tmp_path / "sft-adapter")
    main_args = diffu_grpo.parse_args(args)
    diffu_grpo.resolve_defaults(main_args)
    model, *_ = diffu_grpo.build_model(main_args, "cpu", torch.float32, master=False)  # (writes no init-merged)
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert lora and all(m.dropout.p == 0 for m in lora)
    diffu_grpo.main(args)
    rows = metrics(tmp_path / "rl")
    assert rows[0]["ratio"] == 1.0
    for r in rows:
        assert r["ratio"] == pytest.approx(1.0, abs=1e-6) and r["clip_frac"] == 0 and r["kl"] < 1e-10


def test_fp32_head_matches_float64_under_bf16_autocast(tiny_model):
    """The estimator's head: fp32 logits even under bf16 autocast, as a float64 computation of the same bf16
    inputs gives them; the plain head returns bf16 logits, hundreds of times further off."""
    from diffu_grpo import _token_logprobs
    model = tiny_model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(3, 5, model.config.d_model, generator=g) * 4).to(torch.bfloat16)
    tokens = torch.randint(0, model.config.vocab_size, (3, 5), generator=g)
    w = model.transformer.ff_out.weight.double()[: model.config.vocab_size]
    want = torch.log_softmax(h.double() @ w.T, -1).gather(-1, tokens[..., None]).squeeze(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _token_logprobs(model.head, h, tokens)
        plain = model.head(h)
    assert got.dtype == torch.float32 and plain.dtype == torch.bfloat16
    err = (got.double() - want).abs().max().item()
    plain_err = (torch.log_softmax(plain.double(), -1).gather(-1, tokens[..., None]).squeeze(-1) - want).abs().max()
    assert err < 1e-5 and plain_err > 100 * err


def test_two_processes_match_one(sudoku_csv, tmp_path):
    from diffu_grpo import main
    common = ["--max-steps", "2", "--mu", "2", "--beta", "0.04"]
    main(grpo_args(sudoku_csv, tmp_path / "one", *common))
    torchrun(ROOT / "diffu_grpo.py", *grpo_args(sudoku_csv, tmp_path / "two", *common), cwd=tmp_path, timeout=300)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in ("reward", "loss", "kl", "completion_len", "ratio"):
            if key in a or key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for k, v in adapter(tmp_path / "one" / "step-000002").items():
        torch.testing.assert_close(adapter(tmp_path / "two" / "step-000002")[k], v, rtol=1e-4, atol=1e-6)


def test_periodic_validation_is_logged(sudoku_csv, tmp_path):
    from diffu_grpo import main
    main(grpo_args(sudoku_csv, tmp_path, "--max-steps", "2", "--mu", "1", "--beta", "0", "--eval-every", "2",
                   "--val-size", "3"))
    rows = metrics(tmp_path)
    assert "val_accuracy" not in rows[0] and 0.0 <= rows[1]["val_accuracy"] <= 1.0 and "val/sudoku" in rows[1]


def test_init_from_sft_adapter_records_a_loadable_base(sudoku_csv, tiny_dir, tmp_path):
    import eval as evaluation
    from diffu_grpo import main, merge_record
    from model import LLaDA, adapter_base, save_adapter
    sft = apply_lora(LLaDA.from_pretrained(tiny_dir), r=2, alpha=4)
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    save_adapter(sft, tmp_path / "sft-adapter", base_model=str(tiny_dir))
    args = grpo_args(sudoku_csv, tmp_path / "rl", "--max-steps", "1", "--mu", "1", "--beta", "0")
    args[args.index("tiny")] = str(tmp_path / "sft-adapter")  # --init the SFT adapter
    main(args)
    ckpt = tmp_path / "rl" / "step-000001"
    assert Path(adapter_base(ckpt)) == tmp_path / "rl" / "init-merged"  # a real folder: base + SFT, merged
    record = json.loads((tmp_path / "rl" / "init-merged" / "merged_from.json").read_text())  # checked on resume
    assert record == merge_record(tmp_path / "sft-adapter", str(tiny_dir))
    model = evaluation.load_model(None, ckpt, torch.float32, "cpu")  # eval finds the base by itself
    ids = torch.tensor([[0, 5, 6, 7]])
    from model import load_adapter, merge_lora
    want = load_adapter(merge_lora(load_adapter(LLaDA.from_pretrained(tiny_dir), tmp_path / "sft-adapter")), ckpt)
    torch.testing.assert_close(model(ids), want.eval()(ids), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="was trained on"):
        evaluation.load_model(str(tiny_dir), ckpt, torch.float32, "cpu")  # the wrong base is refused
