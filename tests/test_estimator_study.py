"""runs/estimator_study.py: the trajectory log-prob against brute force, the estimators' plumbing, the quick study."""
import json
import sys
from pathlib import Path

import pytest
import torch

import diffu_grpo
from model import example_generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runs"))
import estimator_study as es  # noqa: E402


def prompt(tokenizer, text="3+4"):
    ids = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False),
                    add_special_tokens=False)["input_ids"]
    return torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_trajectory_logprob_of_a_two_token_completion_by_brute_force(tiny_model, tokenizer, temperature):
    """Two tokens, two steps (one committed per step): the replayed log-prob is log softmax(l / T) of the first
    committed token under [prompt, M, M] plus that of the second under the state holding the first, computed here
    by hand; and for a fixed order, exp of it sums to 1 over all V^2 completions."""
    m, mask_id = tiny_model, tiny_model.config.mask_token_id
    ids, am = prompt(tokenizer)
    P, V = ids.shape[1], m.config.vocab_size
    seen_orders = set()
    for seed in range(12):  # several draws: both commit orders show up
        with torch.no_grad():
            y, commit, S = es.sample_with_trajectory(m, ids, am, steps=2, gen_length=2, block_length=2,
                                                     temperature=temperature, generator=[example_generator(seed)])
            got = es.trajectory_logprobs(m, ids, am, y, commit, S, temperature, mask_id)
        if (y == mask_id).any():  # the random model proposed [MASK] itself (it stays masked): no 2-step path
            continue
        assert S == 2 and sorted(commit[0].tolist()) == [0, 1]
        first, second = commit[0].tolist().index(0), commit[0].tolist().index(1)
        seen_orders.add(first)
        with torch.no_grad():
            x0 = torch.cat([ids, torch.full((1, 2), mask_id)], 1)
            lp0 = torch.log_softmax(m(x0).double()[0, P + first] / temperature, -1)[y[0, first]]
            x1 = x0.clone()
            x1[0, P + first] = y[0, first]
            lp1 = torch.log_softmax(m(x1).double()[0, P + second] / temperature, -1)[y[0, second]]
        torch.testing.assert_close(got[0, first].double(), lp0, rtol=0, atol=1e-5)
        torch.testing.assert_close(got[0, second].double(), lp1, rtol=0, atol=1e-5)
    assert seen_orders == {0, 1}
    # normalisation, position 1 committed first: over every first token a (position 1), exp(log-prob of a) sums to
    # 1; for a given a, over every second token b (position 0, the state holds a), exp(log-prob of b) sums to 1
    v, few = torch.arange(V), torch.tensor([5, 40, 77])
    every_a = torch.stack([few.repeat_interleave(V), v.repeat(3)], 1)  # (3V, 2): b in few, a over the vocabulary
    every_b = torch.stack([v.repeat(3), few.repeat_interleave(V)], 1)  # (3V, 2): a in few, b over the vocabulary
    every = torch.cat([every_a, every_b])
    commit = torch.tensor([[1, 0]]).expand(len(every), 2)
    with torch.no_grad():
        lp = es.trajectory_logprobs(m, ids.expand(len(every), -1), am.expand(len(every), -1), every, commit, 2,
                                    temperature, mask_id).double().view(2, 3, V, 2)
    one = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(lp[0, :, :, 1].exp().sum(1), one, rtol=0, atol=1e-5)  # first token a
    torch.testing.assert_close(lp[1, :, :, 0].exp().sum(1), one, rtol=0, atol=1e-5)  # second token b given a
    torch.testing.assert_close(lp[0, 0, :, 1], lp[0, 2, :, 1])  # the first token's log-prob does not see the second


def test_commit_steps_from_states():
    M = 9
    states = [torch.tensor([[M, M, M, M]]), torch.tensor([[M, 5, M, M]]), torch.tensor([[M, 5, M, 7]])]
    final = torch.tensor([[4, 5, 6, 7]])
    assert es.commit_steps(states, final, M).tolist() == [[2, 0, 2, 1]]
    final_with_mask = torch.tensor([[4, 5, M, 7]])  # never committed (the model proposed [MASK]): the last step
    assert es.commit_steps(states, final_with_mask, M).tolist() == [[2, 0, 2, 1]]


def test_one_state_is_d1_without_prompt_mask_and_all_states_is_exact(tiny_model, tokenizer):
    m, mask_id = tiny_model, tiny_model.config.mask_token_id
    ids, am = prompt(tokenizer)
    ids, am = ids.repeat(3, 1), am.repeat(3, 1)
    gens = [example_generator(1, i) for i in range(3)]
    with torch.no_grad():
        y, commit, S = es.sample_with_trajectory(m, ids, am, steps=4, gen_length=8, block_length=4, temperature=1.0,
                                                 generator=gens)
        one = es.trajectory_logprobs(m, ids, am, y, commit, S, 1.0, mask_id, states=1)
        d1_unmasked = diffu_grpo.completion_logprobs(m, ids, am, y, gens, 0.0, mask_id)
        exact = es.trajectory_logprobs(m, ids, am, y, commit, S, 1.0, mask_id)
        all_states = es.trajectory_logprobs(m, ids, am, y, commit, S, 1.0, mask_id, states=S)
    torch.testing.assert_close(one, d1_unmasked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_states, exact)
    assert es.state_starts(12, 2) == [0, 6] and es.state_starts(12, None) == list(range(12))
    assert not torch.allclose(one, exact)  # the second block sees the first: other numbers


def test_antithetic_prompt_masks_are_disjoint(tiny_model, tokenizer):
    m, mask_id = tiny_model, tiny_model.config.mask_token_id
    ids, am = prompt(tokenizer, "0123456789 abcdefghij")
    y = torch.randint(10, 100, (1, 4), generator=torch.Generator().manual_seed(0))
    seen = []
    def record(module, args):
        seen.append(args[0][0, :ids.shape[1]].clone())
    handle = m.register_forward_pre_hook(record)
    with torch.no_grad():
        es.one_step(m, ids, am, y, [example_generator(3)], 0.3, mask_id)
        es.one_step(m, ids, am, y, [example_generator(3)], 0.3, mask_id, antithetic=True)
    handle.remove()
    a, b = (s == mask_id for s in seen)
    assert a.any() and b.any() and not (a & b).any()


def test_rl_estimator_keeps_the_samples_and_restores_diffu_grpo(tiny_model, tokenizer):
    originals = (diffu_grpo.rollout, diffu_grpo.estimate, diffu_grpo.generate, diffu_grpo.old_and_ref_logprobs)

    class Args:
        gen_batch_size, diffusion_steps, gen_length, block_length, temperature = 2, 4, 4, 4, 1.0
        threshold, cache, cache_refresh, seed, p_mask_prompt = None, "none", None, 0, 0.15
    ids, am = prompt(tokenizer)
    ids, am = ids.repeat(3, 1), am.repeat(3, 1)
    import contextlib
    plain = diffu_grpo.rollout(tiny_model, ids, am, [0, 1, 2], 0, Args, contextlib.nullcontext())
    with es.rl_estimator("trajectory, M=2"):
        patched = diffu_grpo.rollout(tiny_model, ids, am, [0, 1, 2], 0, Args, contextlib.nullcontext())
        rnd = diffu_grpo.Round(0, ids, am, patched, [0, 1, 2], None, None, None, 1.0, [5, 6])
        with torch.no_grad():
            lp = diffu_grpo.estimate(tiny_model, rnd, 1, [0, 2], Args, tiny_model.config.mask_token_id)
    assert torch.equal(plain, patched) and lp.shape == (2, 4)
    assert (diffu_grpo.rollout, diffu_grpo.estimate, diffu_grpo.generate, diffu_grpo.old_and_ref_logprobs) == originals


def test_forwards_per_round():
    assert es.forwards_per_round("d1", 12, 4) == {"sampler": 12, "old (no grad)": 3, "policy (grad)": 4}
    assert es.forwards_per_round("trajectory", 12, 4) == {"sampler": 12, "old (no grad)": 12, "policy (grad)": 48}
    assert es.forwards_per_round("d1 antithetic", 12, 4) == {"sampler": 12, "old (no grad)": 6, "policy (grad)": 8}
    assert es.forwards_per_round("trajectory, M=2", 12, 1)["old (no grad)"] == 0  # mu = 1: no old pass


def test_quick_study_runs_end_to_end(tmp_path, capsys):
    study = es.main(["--quick", "--seeds", "0", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved["rl"]) == {"taught error", "add skill"} and saved["cheap"] == study["cheap"]
    for setting in saved["rl"].values():
        runs = setting["0"]
        assert {"SFT", "d1", "random-reward control (d1)", study["cheap"], "trajectory, matched compute"} == set(runs)
        for label, r in runs.items():
            solved = r["solved"] if label == "SFT" else r["test"]["solved"]
            assert 0.0 <= solved <= 1.0
    for r in saved["part1"].values():
        assert set(r["estimators"]) == set(es.PART1_ESTIMATORS) | {"ELBO", "trajectory"}
    assert "| estimator | forwards |" in capsys.readouterr().out
