"""Beyond the paper: what d1's one-step log-prob estimator does, measured on the CPU demo (README, "The estimator").

A reviewer asked d1 what approximating the log-probabilities costs; this script measures it on the demo's
4x4 Sudoku models, where every draw is keyed and the sampler's decoding path can be replayed exactly.

The log-probabilities compared, for a completion y sampled by sample.generate (exact mode, no cache) at T > 0:
- d1 (diffu_grpo.completion_logprobs): the prompt masked at p = 0.15, the WHOLE completion masked, one forward;
  log p(y_j) read at every position j. Random through the prompt mask.
- trajectory (the reference): the sampler's own law. At each step it draws a candidate for every masked position
  from softmax(logits / T) and commits the most confident ones (confidence = the candidate's probability under the
  raw logits). The trajectory log-prob of y is sum_j log softmax(logits(x_{c_j}) / T)[y_j], where c_j is the step
  that committed y_j and x_s is the state the sampler ran its forward on at step s (the prompt, the tokens
  committed before step s, [MASK] elsewhere). It is the log-likelihood of the tokens GIVEN the commit order: the
  probability that the confidence rule picked that order is left out (it is not differentiable through the
  argmax-style selection). It needs one forward per denoising step; deterministic.
- trajectory, M states: the same with only M of the states, x at the first step of each of M equal runs of
  steps; a token committed at step c is scored from the last of these states at or before c (M = 1: the
  completion fully masked, the prompt visible; M = the number of steps: the trajectory). M forwards; deterministic.
- d1 x K: the mean of K independent d1 estimates (K forwards). d1 antithetic: two d1 estimates whose prompt masks
  use the uniforms u and 1 - u (2 forwards). coupled: a row draws t ~ U(0, 1) and a uniform v_j per completion
  position; one forward masks the positions with v_j < t, the other the rest, and each token is read from the
  forward in which it is masked (DiffuCoder's coupled sampling; the prompt mask as d1's; 2 forwards).
- ELBO: the masked-diffusion evidence lower bound of the completion, LLaDA's form: l ~ U{1..L}, l random
  completion positions masked, (L / l) sum of their log-probs, averaged over n draws. It bounds the marginal
  log-likelihood of y under the model's conditionals (not the sampler's law); the reference for part 1's
  correlations beside the trajectory.
Every sequence value is the sum over the tokens RL trains (diffu_grpo.completion_mask: up to and including the
first EOS).

Part 1 (no training), on an SFT model: for a few hundred completions sampled from training prompts, each
estimator's correlation with the trajectory and the ELBO, its spread across mask seeds, and the cosine between its
gradient and the trajectory's (per completion, and the group policy gradient sum_i A_i grad log p(y_i) of each
prompt's G completions), per number of blank cells. Part 2 (RL): diffu_grpo.main with the estimator swapped (the
study patches diffu_grpo.estimate and diffu_grpo.rollout for the duration of a run; diffu_grpo.py itself is
unchanged), in the demo's two settings, 3 seeds each, and the random-reward control.

    python runs/estimator_study.py --quick                     # seconds: the code path (tests), no claims
    python runs/estimator_study.py --demo-dir out/demo --reuse-demo-rl --same-steps add-skill --out-dir out/estimator
                                                               # the README section's numbers

Longer than ~650 lines, on purpose: one study, one file, read top to bottom in the order it runs (trajectory
recording and replay, the estimators, part 1, part 2, the tables); splitting it would scatter a single argument
across files, and nothing in it is imported by the project's stages.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import diffu_grpo  # noqa: E402
from model import example_generator, mask_tokens, row_uniforms  # noqa: E402
from sample import generate  # noqa: E402

# -----------------------------------------------------------------------------
# Recording and replaying the sampler's trajectory


@contextlib.contextmanager
def recorded_inputs(model):
    """Collects the input ids (B, L) of every forward of `model` while the block runs (a forward pre-hook)."""
    states = []
    handle = model.register_forward_pre_hook(lambda module, args: states.append(args[0].detach().clone()))
    try:
        yield states
    finally:
        handle.remove()


def commit_steps(states: list[torch.Tensor], final: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The step that committed each completion position. states: the completion part (B, L) of the input of each
    of the sampler's S forwards, final (B, L) the output. A position masked in the inputs of steps 0..c and not in
    that of step c + 1 (or the output) was committed at step c, so c = the number of states 1..S still masked there.
    Returns (B, L) long in [0, S - 1] (a position never committed, the model having proposed [MASK] itself, is
    scored at the last step)."""
    later = torch.stack(states[1:] + [final])  # (S, B, L): the states after each step
    return (later == mask_id).sum(0).clamp(max=len(states) - 1)


def sample_with_trajectory(model, prompt_ids, prompt_mask, **kwargs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """sample.generate (exact mode) plus its trajectory: completion (B, G), commit step of each position (B, G),
    and the number of forwards S. kwargs go to generate (steps, gen_length, block_length, temperature, generator)."""
    if kwargs.get("cache", "none") != "none" or kwargs.get("cfg_scale", 0) > 0:
        raise ValueError("trajectories are recorded in exact mode only (cache='none', no guidance): every forward "
                         "must see the whole state")
    with recorded_inputs(model) as states:
        out = generate(model, prompt_ids, prompt_mask, **kwargs)
    P = prompt_ids.shape[1]
    completion = out[:, P:]
    return completion, commit_steps([s[:, P:] for s in states], completion, model.config.mask_token_id), len(states)


def token_logprobs(model, x: torch.Tensor, am, completion_ids: torch.Tensor, temperature: float = 1.0):
    """log softmax(logits / T)[y_j] at the completion positions of the inputs x (n, P + G), fp32 head (diffu_grpo's
    _token_logprobs; at T = 1 the same numbers as the estimator). completion_ids (n, G) -> (n, G)."""
    G = completion_ids.shape[1]
    h = model(x, am, return_hidden=True)[:, -G:]  # (n, G, D)
    head = diffu_grpo.unwrap(model).head
    scaled = head if temperature == 1.0 else (lambda h_, fp32: head(h_, fp32=fp32) / temperature)
    return diffu_grpo._token_logprobs(scaled, h, completion_ids)


def with_prompt(prompt_ids, prompt_mask, completions: torch.Tensor):
    """Inputs and attention mask for n stacked completion states (n * B, G) of the B prompts: (n * B, P + G)."""
    n = completions.shape[0] // prompt_ids.shape[0]
    x = torch.cat([prompt_ids.repeat(n, 1), completions], dim=1)
    am = None if bool(prompt_mask.all()) else torch.cat([prompt_mask, torch.ones_like(completions[:len(prompt_ids)])],
                                                        dim=1).repeat(n, 1)
    return x, am


def state_starts(n_steps: int, states: int | None) -> list[int]:
    """The steps whose states a trajectory estimate runs: all n_steps, or the first step of each of `states`
    equal runs of steps."""
    m = n_steps if states is None else min(states, n_steps)
    return sorted({math.floor(i * n_steps / m) for i in range(m)})


def trajectory_logprobs(model, prompt_ids, prompt_mask, completion_ids, commit, n_steps: int, temperature: float,
                        mask_id: int, states: int | None = None) -> torch.Tensor:
    """(B, G): the log-prob of each completion token under softmax(logits / T) of the state it was committed from
    (states=None: exact), or of the last of M evenly spaced states at or before it (states=M). One batched
    forward over the used states, (M * B, P + G); differentiable."""
    if temperature <= 0:
        raise ValueError("the trajectory log-prob needs a sampling temperature > 0 (greedy decoding has no law)")
    starts = state_starts(n_steps, states)
    B, G = completion_ids.shape
    seq = torch.cat([torch.where(commit < s, completion_ids, mask_id) for s in starts])  # (M * B, G)
    x, am = with_prompt(prompt_ids, prompt_mask, seq)
    lp = token_logprobs(model, x, am, completion_ids.repeat(len(starts), 1), temperature).view(len(starts), B, G)
    which = torch.searchsorted(torch.tensor(starts, device=commit.device), commit.contiguous(), right=True) - 1  # (B, G)
    return lp.gather(0, which[None]).squeeze(0)


# -----------------------------------------------------------------------------
# The other estimators (per-token log-probs (B, G), so they plug into diffu_grpo's per-token loss)


def one_step(model, prompt_ids, prompt_mask, completion_ids, gens, p_mask_prompt, mask_id, antithetic=False):
    """d1's estimate (diffu_grpo.completion_logprobs). antithetic: the prompt mask from 1 - u instead of u (the
    same generators), i.e. the positions with u > 1 - p: the pair (u, 1 - u) masks disjoint prompt tokens."""
    if not antithetic:
        return diffu_grpo.completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, gens, p_mask_prompt,
                                              mask_id)
    u = 1.0 - row_uniforms(gens, prompt_mask)
    noisy, _ = mask_tokens(prompt_ids, prompt_mask.bool(), p_mask_prompt, u, mask_id)  # padding: never maskable
    return diffu_grpo.completion_logprobs(model, noisy, prompt_mask, completion_ids, gens, 0.0, mask_id)


def coupled(model, prompt_ids, prompt_mask, completion_ids, gens, p_mask_prompt, mask_id) -> torch.Tensor:
    """Two forwards with complementary completion masks (positions with v_j < t, then the rest), the prompt masked
    as d1's in both; each token read from the forward where it is masked."""
    B, G = completion_ids.shape
    u = row_uniforms(gens, prompt_mask)
    noisy, _ = mask_tokens(prompt_ids, prompt_mask.bool(), p_mask_prompt, u, mask_id)
    tv = torch.stack([torch.rand(G + 1, generator=g) for g in gens]).to(completion_ids.device)  # (B, 1 + G)
    first = tv[:, 1:] < tv[:, :1]  # (B, G): masked in the first forward
    seq = torch.cat([completion_ids.masked_fill(first, mask_id), completion_ids.masked_fill(~first, mask_id)])
    x, am = with_prompt(noisy, prompt_mask, seq)
    lp = token_logprobs(model, x, am, completion_ids.repeat(2, 1)).view(2, B, G)
    return torch.where(first, lp[0], lp[1])


def elbo(model, prompt_ids, prompt_mask, completion_ids, cmask, gens, samples: int, mask_id: int,
         per_draw: bool = False) -> torch.Tensor:
    """(B,) Monte Carlo ELBO of each completion over its trained tokens (cmask), LLaDA's form: per draw
    l ~ U{1..G} positions masked at random, (G / l) * the sum of the masked trained tokens' log-probs; the mean of
    `samples` draws, or with per_draw=True every draw (samples, B). The tokens after the first EOS are masked like
    the others but not summed (their terms are ~0 for the demo's models). All draws run as one batch."""
    B, G = completion_ids.shape
    draws = [(torch.randperm(G, generator=g), int(torch.randint(1, G + 1, (), generator=g)))
             for _ in range(samples) for g in gens]  # draw-major: (samples * B)
    ranks = torch.stack([r for r, _ in draws]).to(completion_ids.device)  # (samples * B, G)
    l = torch.tensor([n for _, n in draws], device=completion_ids.device)  # (samples * B,)
    masked = ranks < l[:, None]
    y = completion_ids.repeat(samples, 1)
    x, am = with_prompt(prompt_ids, prompt_mask, y.masked_fill(masked, mask_id))
    lp = token_logprobs(model, x, am, y)  # (samples * B, G)
    terms = ((lp * masked * cmask.repeat(samples, 1)).sum(1) * G / l).view(samples, B)
    return terms if per_draw else terms.mean(0)


# -----------------------------------------------------------------------------
# The estimators by name: per-token log-probs (B, G) of rows of a diffu_grpo Round


# name -> (forwards per estimate, deterministic); "trajectory" forwards = the sampler's steps (None here)
ESTIMATORS = {"d1": (1, False), "d1 x4": (4, False), "d1 antithetic": (2, False), "coupled": (2, False),
              "trajectory, M=1": (1, True), "trajectory, M=2": (2, True), "trajectory, M=3": (3, True),
              "trajectory, M=4": (4, True), "trajectory": (None, True)}


def estimator_states(name: str) -> int | None:
    """M of a "trajectory, M=..." estimator, None for the exact trajectory."""
    return int(name.split("M=")[1]) if "M=" in name else None


def estimate_rows(name: str, model, prompt_ids, prompt_mask, completion_ids, mask_gens, p_mask_prompt: float,
                  mask_id: int, commit=None, n_steps: int | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs (B, G) of the completions under estimator `name`. mask_gens(j) -> one generator per row
    for the j-th independent mask draw (random estimators); commit (B, G) and n_steps: the recorded trajectory
    (trajectory estimators)."""
    if name.startswith("trajectory"):
        return trajectory_logprobs(model, prompt_ids, prompt_mask, completion_ids, commit, n_steps, temperature,
                                   mask_id, estimator_states(name))
    args = (model, prompt_ids, prompt_mask, completion_ids)
    if name == "d1":
        return one_step(*args, mask_gens(0), p_mask_prompt, mask_id)
    if name == "d1 x4":
        return torch.stack([one_step(*args, mask_gens(j), p_mask_prompt, mask_id) for j in range(4)]).mean(0)
    if name == "d1 antithetic":
        return (one_step(*args, mask_gens(0), p_mask_prompt, mask_id)
                + one_step(*args, mask_gens(0), p_mask_prompt, mask_id, antithetic=True)) / 2
    if name == "coupled":
        return coupled(*args, mask_gens(0), p_mask_prompt, mask_id)
    raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")


def forwards_per_round(name: str, n_steps: int, mu: int) -> dict[str, int]:
    """Forward passes per completion in one rollout round of diffu_grpo: the sampler's, the no-grad old-policy
    passes (a deterministic estimator is the same under every mask seed: one pass serves all mu - 1 inner steps)
    and the passes with grad (each followed by a backward, ~2 forwards of work). beta = 0: no reference pass."""
    f, deterministic = ESTIMATORS[name]
    f = n_steps if f is None else f
    return {"sampler": n_steps, "old (no grad)": (f if mu > 1 else 0) if deterministic else (mu - 1) * f,
            "policy (grad)": mu * f}


@contextlib.contextmanager
def rl_estimator(name: str):
    """Runs diffu_grpo with estimator `name` in place of d1's while the block runs: diffu_grpo.estimate is
    replaced, diffu_grpo.rollout records each completion's trajectory (the same samples: its sampler call is
    wrapped, the draws unchanged), and a deterministic estimator's old-policy pass runs once per round. "d1" changes
    nothing. Patches are undone on exit (unittest.mock)."""
    if name == "d1":
        yield
        return
    from unittest import mock
    _, deterministic = ESTIMATORS[name]  # raises KeyError for an unknown name: checked by the caller
    trajectories, current = [], {}

    def recording_generate(model, prompt, attention_mask=None, **kwargs):
        completion, commit, n_steps = sample_with_trajectory(model, prompt, attention_mask, **kwargs)
        trajectories.append((commit, n_steps))
        return torch.cat([prompt, completion], dim=1)

    def rollout(model, prompt_ids, prompt_mask, gidx, rnd, args, autocast, stats=None):
        trajectories.clear()
        out = original_rollout(model, prompt_ids, prompt_mask, gidx, rnd, args, autocast, stats)
        current.update(round=rnd, commit=torch.cat([c for c, _ in trajectories]),
                       n_steps=max(n for _, n in trajectories))
        return out

    def estimate(model, rnd, k, rows, args, mask_id):
        if current.get("round") != rnd.index:
            raise RuntimeError(f"no recorded trajectory for round {rnd.index}")
        gens = lambda j: [example_generator(rnd.mask_seeds[k], rnd.gidx[i], j) for i in rows]  # noqa: E731
        return estimate_rows(name, model, rnd.prompt_ids[rows], rnd.prompt_mask[rows], rnd.completion_ids[rows],
                             gens, args.p_mask_prompt, mask_id, current["commit"][rows], current["n_steps"],
                             args.temperature)

    def old_and_ref(model, ref_model, rnd, mu, args, autocast, mask_id):
        old, ref = original_old_and_ref(model, ref_model, rnd, min(mu, 2), args, autocast, mask_id)
        return old[:1] + old[1:] * (mu - 1), ref[:1] * mu  # every mask seed gives the same numbers

    original_rollout, original_old_and_ref = diffu_grpo.rollout, diffu_grpo.old_and_ref_logprobs
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(diffu_grpo, "generate", recording_generate))
        stack.enter_context(mock.patch.object(diffu_grpo, "rollout", rollout))
        stack.enter_context(mock.patch.object(diffu_grpo, "estimate", estimate))
        if deterministic:
            stack.enter_context(mock.patch.object(diffu_grpo, "old_and_ref_logprobs", old_and_ref))
        yield


# -----------------------------------------------------------------------------
# Part 1: the estimates against the references, no training

PART1_ESTIMATORS = ["d1", "d1 antithetic", "coupled", "d1 x4", "trajectory, M=1", "trajectory, M=2",
                    "trajectory, M=3", "trajectory, M=4"]


def flat_grad(value: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def pearson(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / (x.norm() * y.norm()).clamp_min(1e-300))


def sample_completions(model, tokenizer, examples: list[dict], G: int, seed: int, sizes: dict):
    """G completions per prompt at the RL settings (T = 1, 12 steps, 24 tokens), keyed like a round of diffu_grpo
    (example_generator(seed, 1, 0, i)), with their trajectories. Returns prompt ids, mask, completions, commit
    steps, the number of sampler forwards and the task rewards."""
    import data
    rows = [tokenizer(data.format_prompt(tokenizer, ex["prompt"]), add_special_tokens=False)["input_ids"]
            for ex in examples for _ in range(G)]
    from sample import left_pad
    prompt_ids, prompt_mask = left_pad(rows, model.config.eos_token_id)
    gens = [example_generator(seed, 1, 0, i) for i in range(len(rows))]
    with torch.no_grad():
        completion, commit, n_steps = sample_with_trajectory(
            model, prompt_ids, prompt_mask, steps=sizes["diffusion_steps"], gen_length=sizes["gen_length"],
            block_length=sizes["gen_length"], temperature=1.0, generator=gens)
    texts = tokenizer.batch_decode(completion, skip_special_tokens=True)
    rewards, _ = diffu_grpo.score(["sudoku"], [ex for ex in examples for _ in range(G)], texts)
    return prompt_ids, prompt_mask, completion, commit, n_steps, rewards


def gradient_cosines(model, value, elbo_value, adv: torch.Tensor, G: int, blanks: list[int]):
    """Gradients one completion at a time: the trajectory's, each part-1 estimator's (value(name, rows) -> the
    differentiable sequence value, mask draw 0) and the ELBO's (elbo_value(rows, i)); their cosine with the
    trajectory's per completion, and per prompt group (G completions) the cosine of the policy-gradient directions
    sum_i A_i grad log p(y_i). Groups whose rewards all tie (no policy gradient) are skipped. Returns
    {name: [cosine per completion]}, {name: [cosine per group]}, the blank count of each scored group."""
    params = [q for q in model.parameters() if q.requires_grad]
    names = PART1_ESTIMATORS + ["ELBO"]
    per_completion, per_group, group_blanks = {n: [] for n in names}, {n: [] for n in names}, []
    for g0 in range(0, len(adv), G):
        sums = {n: 0.0 for n in ["trajectory"] + names}
        for i in range(g0, g0 + G):
            one = slice(i, i + 1)
            grads = {name: flat_grad(value(name, one), params) for name in ["trajectory"] + PART1_ESTIMATORS}
            grads["ELBO"] = flat_grad(elbo_value(one, i), params)
            for name in names:
                per_completion[name].append(cosine(grads[name], grads["trajectory"]))
            for name, g in grads.items():
                sums[name] = sums[name] + float(adv[i]) * g
        if bool((adv[g0:g0 + G] != 0).any()):
            group_blanks.append(blanks[g0])
            for name in names:
                per_group[name].append(cosine(sums[name], sums["trajectory"]))
    return per_completion, per_group, group_blanks


def by_blanks(xs: list[float], keys: list[int]) -> dict[str, dict]:
    """Mean of xs per key (the number of blank cells) -> {"7": {"mean": ..., "n": ...}, ...}."""
    out = {}
    for b in sorted(set(keys)):
        sel = [x for x, k in zip(xs, keys) if k == b]
        out[str(b)] = {"mean": sum(sel) / len(sel), "n": len(sel)}
    return out


def part1(ckpt: Path, train_csv: Path, sizes: dict, seed: int = 0) -> dict:
    """Every estimator against the trajectory (and the ELBO) on completions sampled from the model at `ckpt`."""
    import data
    from model import LLaDA, load_tokenizer
    model, tokenizer = LLaDA.from_pretrained(ckpt).eval(), load_tokenizer(ckpt)
    mask_id, p = model.config.mask_token_id, 0.15
    G = sizes["part1_G"]
    examples = data.load_task("sudoku", "train", path=train_csv, style="compact", limit=sizes["part1_prompts"])
    prompt_ids, prompt_mask, y, commit, S, rewards = sample_completions(model, tokenizer, examples, G, seed, sizes)
    cmask = diffu_grpo.completion_mask(y, model.config.eos_token_id)
    adv = diffu_grpo.group_advantages(rewards, G)
    blanks = [ex["target"][0].count("0") for ex in examples for _ in range(G)]
    N = len(y)
    total = lambda lp: (lp * cmask).sum(1)  # noqa: E731  (B,) sequence values over the trained tokens

    def draw(name, r, rows=slice(None)):  # the estimate under mask draw r (r = 0: the draw the gradients use)
        gens = lambda j: [example_generator(10_000 + r, i, j) for i in range(N)[rows]]  # noqa: E731
        return estimate_rows(name, model, prompt_ids[rows], prompt_mask[rows], y[rows], gens, p, mask_id,
                             commit[rows], S, 1.0)

    t0 = time.time()
    values = {}
    with torch.no_grad():
        traj = total(draw("trajectory", 0)).tolist()
        for name in PART1_ESTIMATORS:
            draws = 1 if ESTIMATORS[name][1] else sizes["part1_mask_seeds"]
            values[name] = torch.stack([total(draw(name, r)) for r in range(draws)])  # (draws, N)
        el = [elbo(model, prompt_ids[i:i + 1], prompt_mask[i:i + 1], y[i:i + 1], cmask[i:i + 1],
                   [example_generator(20_000, i)], sizes["elbo_samples"], mask_id, per_draw=True)[:, 0]
              for i in range(N)]
    elbo_mean = [float(e.mean()) for e in el]
    elbo_se = [float(e.std() / math.sqrt(len(e))) if len(e) > 1 else 0.0 for e in el]
    t_values = time.time() - t0

    def elbo_value(one, i):  # the ELBO of completion i with the gradients' own draws
        return elbo(model, prompt_ids[one], prompt_mask[one], y[one], cmask[one], [example_generator(30_000, i)],
                    sizes["elbo_grad_samples"], mask_id).sum()

    t0 = time.time()
    names = PART1_ESTIMATORS + ["ELBO"]
    per_completion, per_group, group_blanks = gradient_cosines(model, lambda name, one: total(draw(name, 0, one)).sum(),
                                                               elbo_value, adv, G, blanks)
    t_grads = time.time() - t0

    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    result = {"ckpt": str(ckpt), "completions": N, "prompts": len(examples), "G": G, "sampler_forwards": S,
              "reward_mean": float(rewards.mean()), "groups_with_signal": len(group_blanks),
              "trajectory_mean": mean(traj), "elbo_mean": mean(elbo_mean), "elbo_mc_se": mean(elbo_se),
              "corr_elbo_trajectory": pearson(elbo_mean, traj), "seconds_values": t_values,
              "seconds_gradients": t_grads, "estimators": {}}
    for name in names:
        if name == "ELBO":
            v0, spread, forwards = elbo_mean, mean(elbo_se), sizes["elbo_samples"]
        else:
            v = values[name]
            v0, spread = v[0].tolist(), float(v.std(0).pow(2).mean().sqrt()) if len(v) > 1 else 0.0
            forwards = ESTIMATORS[name][0]
        result["estimators"][name] = {
            "forwards": forwards, "corr_trajectory": pearson(v0, traj), "corr_elbo": pearson(v0, elbo_mean),
            "mean_minus_trajectory": mean([a - b for a, b in zip(v0, traj)]), "seed_sd": spread,
            "cos_completion": mean(per_completion[name]), "cos_group": mean(per_group[name]),
            "cos_completion_by_blanks": by_blanks(per_completion[name], blanks),
            "cos_group_by_blanks": by_blanks(per_group[name], group_blanks)}
    result["estimators"]["trajectory"] = {"forwards": S, "corr_trajectory": 1.0, "corr_elbo": pearson(traj, elbo_mean),
                                          "mean_minus_trajectory": 0.0, "seed_sd": 0.0, "cos_completion": 1.0,
                                          "cos_group": 1.0}
    return result


# -----------------------------------------------------------------------------
# Part 2: RL outcomes in the demo's two settings

# Sizes. RL: the demo's runs (rl_args; 80 optimizer steps = 20 rounds of mu = 4), validation off (nothing here
# reads it: the held-out test score is the outcome). add-skill: clean demonstrations (error rate 0), one epoch
# of each candidate size; the one whose greedy solved rate on validation puzzles (the 48 validation grids,
# never in training or test) is closest to 50% is used, so both settings start near 50% solved.
FULL = dict(part1_prompts=32, part1_G=8, part1_mask_seeds=8, elbo_samples=128, elbo_grad_samples=16,
            diffusion_steps=12, gen_length=24, rl_steps=80, mu=4, rl_extra=[], skill_candidates=[16000, 20000, 24000],
            val_items=256, rl_prompts=4000, test_items=512, sft_epochs=1, trajectory_micro_batch=32)
QUICK = dict(part1_prompts=2, part1_G=2, part1_mask_seeds=2, elbo_samples=2, elbo_grad_samples=2,
             diffusion_steps=12, gen_length=24, rl_steps=4, mu=4,
             rl_extra=["--prompts-per-step", "2", "--num-generations", "2", "--micro-batch-size", "4"],
             skill_candidates=[128, 256], val_items=8, rl_prompts=16, test_items=8, sft_epochs=1,
             trajectory_micro_batch=None)
SETTINGS = ("taught error", "add skill")
CHEAP_MAX_FORWARDS = 2  # a "cheap" variant costs at most 2x d1's forwards per estimate


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def fwd_equivalents(f: dict[str, int]) -> int:
    """Forward-pass equivalents of forwards_per_round's counts: a backward costs about two forwards."""
    return f["sampler"] + f["old (no grad)"] + 3 * f["policy (grad)"]


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def train_sft(folder: Path, data_dir: Path, seed: int, n_examples: int, epochs: int) -> Path:
    """The demo's SFT (sudoku_demo.sft_args) on data_dir/sft.jsonl; the warmup is capped at a fifth of the run."""
    import sft
    import sudoku_demo
    last = sorted(folder.glob("step-*"))
    if (folder / "done").is_file() and last:
        return last[-1]
    steps = max(1, n_examples * epochs // 64)
    sft.main(sudoku_demo.sft_args(data_dir, folder, seed, epochs, warmup=min(100, steps // 5))
             + (["--overwrite"] if folder.exists() else []))
    (folder / "done").write_text("")
    return sorted(folder.glob("step-*"))[-1]


def add_skill_models(out: Path, seeds: list[int], sizes: dict) -> tuple[dict[int, Path], Path, dict]:
    """The add-skill SFT models: candidate sizes trained with seed 0 and scored on validation puzzles, the pick
    (closest to 50% solved) trained for the other seeds. Returns {seed: checkpoint}, the data folder, the
    selection record."""
    import data
    import sudoku_demo
    val = data.synthetic_task("sudoku", "val", sizes["val_items"], seed=0, blanks=(6, 10))
    for i, ex in enumerate(val):
        ex["task"] = "sudoku"
    record = read_json(out / "selection.json") or {"rule": "the candidate closest to 50% greedy solved on "
                                                           f"{sizes['val_items']} validation-grid puzzles",
                                                   "candidates": {}}
    for n in sizes["skill_candidates"]:
        if str(n) in record["candidates"]:
            continue
        data_dir = out / f"data-{n}"
        sudoku_demo.make_data(data_dir, dict(sft_examples=n, rl_prompts=sizes["rl_prompts"],
                                             test_items=sizes["test_items"]), error_rate=0.0)
        ckpt = train_sft(out / f"sft-{n}" / "seed0", data_dir, 0, n, sizes["sft_epochs"])
        record["candidates"][str(n)] = sudoku_demo.test_accuracy(ckpt, val)
        write_json(out / "selection.json", record)
    pick = min(sizes["skill_candidates"], key=lambda n: abs(record["candidates"][str(n)]["solved"] - 0.5))
    record["picked"] = pick
    write_json(out / "selection.json", record)
    data_dir = out / f"data-{pick}"
    ckpts = {s: train_sft(out / f"sft-{pick}" / f"seed{s}", data_dir, s, pick, sizes["sft_epochs"]) for s in seeds}
    return ckpts, data_dir, record


def rl_run(folder: Path, name: str, ckpt: Path, train_csv: Path, test: list[dict], seed: int, rounds: int,
           sizes: dict, control: bool = False) -> dict:
    """One diffu_grpo run with estimator `name`, scored on the held-out test puzzles; result.json caches it."""
    import sudoku_demo
    done = read_json(folder / "result.json")
    if done is not None:
        return done
    t0 = time.time()
    extra = list(sizes["rl_extra"]) + (["--random-reward"] if control else [])
    if name == "trajectory" and sizes["trajectory_micro_batch"]:  # 12 states per row under grad: less memory
        extra += ["--micro-batch-size", str(sizes["trajectory_micro_batch"])]  # (the same math)
    if folder.exists():
        extra.append("--overwrite")  # an interrupted run starts over
    with rl_estimator(name):
        diffu_grpo.main(sudoku_demo.rl_args(ckpt, train_csv, folder, seed, rounds * sizes["mu"], 0, *extra))
    rewards = sudoku_demo.round_rewards(sudoku_demo.metrics(folder))
    f = forwards_per_round(name, sizes["diffusion_steps"], sizes["mu"])
    result = {"estimator": name, "control": control, "seed": seed, "rounds": rounds,
              "steps": rounds * sizes["mu"], "forwards_per_round": f, "fwd_equivalents_per_round": fwd_equivalents(f),
              "test": sudoku_demo.test_accuracy(sorted(folder.glob("step-*"))[-1], test),
              "rollout_reward": {**sudoku_demo.reward_quarters(rewards), "curve": rewards},
              "minutes": (time.time() - t0) / 60}
    write_json(folder / "result.json", result)
    return result


def demo_rl_rows(demo_dir: Path, seed: int, sizes: dict) -> dict:
    """The demo's own d1 and control runs of a seed (runs/sudoku_demo.py), in rl_run's format."""
    summary = json.loads((demo_dir / f"seed{seed}" / "summary.json").read_text())
    out = {}
    for key, control in (("rl", False), ("control", True)):
        import sudoku_demo
        rewards = sudoku_demo.round_rewards(sudoku_demo.metrics(demo_dir / f"seed{seed}" / key))
        f = forwards_per_round("d1", sizes["diffusion_steps"], sizes["mu"])
        out["control" if control else "d1"] = {
            "estimator": "d1", "control": control, "seed": seed, "rounds": len(rewards),
            "steps": len(rewards) * sizes["mu"], "forwards_per_round": f, "fwd_equivalents_per_round":
            fwd_equivalents(f), "test": summary[key], "minutes": summary[f"{key}_minutes"], "from_demo": True,
            "rollout_reward": {**summary[f"{key}_rollout_reward"], "curve": rewards}}
    return out


def pick_cheap(part1_results: dict) -> str:
    """The variant, other than d1, of at most CHEAP_MAX_FORWARDS forwards whose group policy-gradient direction is
    closest to the trajectory's (mean cosine over the settings' SFT models). Fixed before any RL run."""
    names = [n for n in PART1_ESTIMATORS if n != "d1" and ESTIMATORS[n][0] <= CHEAP_MAX_FORWARDS]
    score = lambda n: sum(r["estimators"][n]["cos_group"] for r in part1_results.values()) / len(part1_results)  # noqa
    scores = {n: score(n) for n in names}  # nan (no group with a gradient, --quick) ranks last
    return max(names, key=lambda n: scores[n] if math.isfinite(scores[n]) else -math.inf)


def setting_runs(cheap: str, sizes: dict, same_steps: bool) -> list[tuple[str, str, int, bool]]:
    """(label, estimator, rounds, control) of the RL runs of a setting and seed: d1's run, its random-reward control,
    the cheap variant at d1's rounds, the trajectory at d1's compute (fewer rounds: forward-pass equivalents per
    completion matched, fwd_equivalents), and with same_steps the trajectory at d1's rounds."""
    rounds = sizes["rl_steps"] // sizes["mu"]
    fe = lambda name: fwd_equivalents(forwards_per_round(name, sizes["diffusion_steps"], sizes["mu"]))  # noqa: E731
    matched = max(1, round(rounds * fe("d1") / fe("trajectory")))
    runs = [("d1", "d1", rounds, False), ("random-reward control (d1)", "d1", rounds, True),
            (cheap, cheap, rounds, False), ("trajectory, matched compute", "trajectory", matched, False)]
    return runs + ([("trajectory, same steps", "trajectory", rounds, False)] if same_steps else [])


def demo_ckpt(demo_dir: Path, seed: int) -> Path:
    """The SFT checkpoint of a seed of runs/sudoku_demo.py's output (the taught-error setting)."""
    found = sorted((demo_dir / f"seed{seed}" / "sft").glob("step-*"))
    if not found:
        raise FileNotFoundError(f"no SFT checkpoint in {demo_dir / f'seed{seed}' / 'sft'} (is runs/sudoku_demo.py "
                                "still running? finished runs of this study are kept: run the command again later)")
    return found[-1]


def run_study(out: Path, demo_dir: Path | None, seeds: list[int], sizes: dict, reuse_demo_rl: bool = False,
              same_steps: tuple[str, ...] = ()) -> dict:
    """The whole study, in an order that needs the taught-error (demo) checkpoints as late as possible: add-skill
    SFT models, part 1 (add skill, then taught error: seed 0), the cheap variant's pick, RL (add skill, then taught
    error). Every finished unit is saved and reused when the command runs again."""
    import data
    import sudoku_demo
    t_start = time.time()
    say = lambda text: print(f"[estimator study {(time.time() - t_start) / 60:6.1f} min] {text}", flush=True)  # noqa
    if demo_dir is None:  # --quick: a tiny taught-error demo of our own, in the demo's layout
        demo_dir = out / "taught-error-demo"
        n = sizes["skill_candidates"][-1]
        for s in seeds:
            sudoku_demo.make_data(demo_dir / f"seed{s}" / "data", dict(sft_examples=n, rl_prompts=sizes["rl_prompts"],
                                                                    test_items=sizes["test_items"]), error_rate=0.6)
            train_sft(demo_dir / f"seed{s}" / "sft", demo_dir / f"seed{s}" / "data", s, n, sizes["sft_epochs"])
    say("add-skill SFT models (candidate sizes on validation puzzles, then the pick for every seed)")
    skill_ckpts, skill_data, selection = add_skill_models(out / "add-skill-sft", seeds, sizes)
    settings = {"add skill": {"ckpt": skill_ckpts.__getitem__, "data": skill_data},
                "taught error": {"ckpt": lambda s: demo_ckpt(demo_dir, s), "data": demo_dir / f"seed{seeds[0]}" / "data"}}
    tests = {name: (st["data"] / "test.csv").read_text() for name, st in settings.items()}
    if len(set(tests.values())) != 1:
        raise ValueError("the two settings' test puzzles differ: they must be the demo's (same sizes, data seed 0)")
    test = data.load_task("sudoku", "test", path=skill_data / "test.csv", style="compact")
    study = {"sizes": sizes, "seeds": seeds, "demo_dir": str(demo_dir), "selection": selection, "part1": {},
             "rl": {}}

    for name, st in settings.items():
        path = out / f"part1-{slug(name)}.json"
        if read_json(path) is None:
            say(f"part 1, {name}: the estimators against the trajectory, SFT model of seed {seeds[0]}")
            write_json(path, part1(st["ckpt"](seeds[0]), st["data"] / "rl_train.csv", sizes, seed=seeds[0]))
        study["part1"][name] = read_json(path)
    study["part1"] = {name: study["part1"][name] for name in SETTINGS}  # table order
    cheap = pick_cheap(study["part1"])
    study["cheap"] = cheap
    say(f"cheap variant for RL: {cheap}")

    for name, st in settings.items():
        by_seed = {}
        for seed in seeds:
            folder = out / slug(name) / f"seed{seed}"
            reused = demo_rl_rows(demo_dir, seed, sizes) if reuse_demo_rl and name == "taught error" else {}
            sft_result = read_json(folder / "sft.json")
            if sft_result is None:
                sft_result = (json.loads((demo_dir / f"seed{seed}" / "summary.json").read_text())["sft"] if reused
                              else sudoku_demo.test_accuracy(st["ckpt"](seed), test))
                write_json(folder / "sft.json", sft_result)
            runs = {"SFT": sft_result}
            for label, estimator, rounds, control in setting_runs(cheap, sizes, slug(name) in same_steps):
                key = "control" if control else "d1" if label == "d1" else None
                if key in reused:
                    runs[label] = reused[key]
                    continue
                if read_json(folder / slug(label) / "result.json") is None:
                    say(f"RL, {name}, seed {seed}: {label} ({rounds} rounds)")
                runs[label] = rl_run(folder / slug(label), estimator, st["ckpt"](seed), st["data"] / "rl_train.csv",
                                     test, seed, rounds, sizes, control)
            by_seed[seed] = runs
        study["rl"][name] = by_seed
    study["rl"] = {name: study["rl"][name] for name in SETTINGS}
    study["minutes"] = (time.time() - t_start) / 60
    return study


# -----------------------------------------------------------------------------
# Tables and the plot


def part1_table(result: dict) -> str:
    lines = ["| estimator | forwards | corr. with trajectory | corr. with ELBO | mean - trajectory (nats) | "
             "SD over mask draws (nats) | gradient cosine, per completion | policy-gradient cosine, per group |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in result["estimators"].items():
        lines.append(f"| {name} | {e['forwards']} | {e['corr_trajectory']:.2f} | {e['corr_elbo']:.2f} | "
                     f"{e['mean_minus_trajectory']:+.2f} | {e['seed_sd']:.2f} | {e['cos_completion']:.2f} | "
                     f"{e['cos_group']:.2f} |")
    return "\n".join(lines)


def by_blanks_table(results: dict) -> str:
    """The group policy-gradient cosine per number of blank cells, every estimator, both settings."""
    blanks = sorted({b for r in results.values() for e in r["estimators"].values()
                     for b in e.get("cos_group_by_blanks", {})}, key=int)
    lines = ["| setting | estimator | " + " | ".join(f"{b} blanks" for b in blanks) + " |",
             "|---|---|" + "---:|" * len(blanks)]
    for setting, r in results.items():
        for name, e in r["estimators"].items():
            if "cos_group_by_blanks" not in e:
                continue
            cells = [e["cos_group_by_blanks"].get(b) for b in blanks]
            lines.append(f"| {setting} | {name} | " + " | ".join(
                f"{c['mean']:.2f} ({c['n']})" if c else "-" for c in cells) + " |")
    return "\n".join(lines)


def rl_table(study: dict) -> str:
    pct = lambda xs: f"{100 * sum(xs) / len(xs):.1f}"  # noqa: E731
    lines = ["| setting | run | forwards per completion per round (sampler + old + policy) | rounds (steps) | "
             "held-out solved, SFT -> RL (mean of seeds) | per seed | rollout reward, first -> last quarter | "
             "minutes per run |",
             "|---|---|---|---:|---|---|---|---:|"]
    for setting, by_seed in study["rl"].items():
        seeds = list(by_seed)
        labels = [k for k in by_seed[seeds[0]] if k != "SFT"]
        sft = [by_seed[s]["SFT"]["solved"] for s in seeds]
        for label in labels:
            rs = [by_seed[s][label] for s in seeds]
            f = rs[0]["forwards_per_round"]
            after = [r["test"]["solved"] for r in rs]
            first = sum(r["rollout_reward"]["first"] for r in rs) / len(rs)
            last = sum(r["rollout_reward"]["last"] for r in rs) / len(rs)
            lines.append(
                f"| {setting} | {label}{' (demo run)' if rs[0].get('from_demo') else ''} | "
                f"{f['sampler']} + {f['old (no grad)']} + {f['policy (grad)']} (~{rs[0]['fwd_equivalents_per_round']}) "
                f"| {rs[0]['rounds']} ({rs[0]['steps']}) | {pct(sft)} -> **{pct(after)}** | "
                + ", ".join(f"{100 * a:.1f} -> {100 * b:.1f}" for a, b in zip(sft, after))
                + f" | {first:.3f} -> {last:.3f} | {sum(r['minutes'] for r in rs) / len(rs):.1f} |")
    return "\n".join(lines)


def plot_study(study: dict, path: Path) -> None:
    """Rollout reward (mean over seeds) against compute (forward-pass equivalents per completion), one panel per
    setting, one line per run (plot.py's make_figure). matplotlib is optional: without it, one line is printed."""
    import plot
    runs = {}
    for setting, by_seed in study["rl"].items():
        seeds = list(by_seed)
        for label in [k for k in by_seed[seeds[0]] if k != "SFT"]:
            rs = [by_seed[s][label] for s in seeds]
            n = min(len(r["rollout_reward"]["curve"]) for r in rs)
            for i in range(n):
                mean = sum(r["rollout_reward"]["curve"][i] for r in rs) / len(rs)
                runs.setdefault(label, []).append({"step": i * rs[0]["fwd_equivalents_per_round"], setting: mean})
    try:
        fig = plot.make_figure(runs, list(study["rl"]), title=f"Rollout reward (T = 1, mean of seeds "
                                                               f"{', '.join(map(str, study['seeds']))})")
    except ImportError as e:
        print(f"plot skipped: {e}")
        return
    for ax, setting in zip(fig.axes, study["rl"]):
        ax.set_title(f"{setting} setting")
        ax.set_xlabel("forward-pass equivalents per completion (backward = 2)")
        ax.set_ylabel("mean task reward of the round's rollouts")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)  # small enough to commit


def report(study: dict) -> str:
    parts = []
    for setting, r in study["part1"].items():
        parts.append(f"Part 1, {setting} SFT model: {r['completions']} completions ({r['prompts']} prompts x "
                     f"G={r['G']}, T = 1), mean reward {r['reward_mean']:.3f}, {r['groups_with_signal']} groups with "
                     f"a policy gradient; trajectory mean {r['trajectory_mean']:.3f} nats, ELBO mean "
                     f"{r['elbo_mean']:.3f} (MC s.e. {r['elbo_mc_se']:.3f})\n\n" + part1_table(r))
    parts.append("Group policy-gradient cosine with the trajectory by number of blank cells (groups):\n\n"
                 + by_blanks_table(study["part1"]))
    parts.append(f"Part 2 (cheap variant picked from part 1: {study['cheap']}):\n\n" + rl_table(study))
    sel = study["selection"]
    parts.append("add-skill SFT size (1 epoch, clean demonstrations), validation solved: " + ", ".join(
        f"{n} examples {100 * v['solved']:.1f}%" for n, v in sel["candidates"].items()) + f"; picked {sel['picked']}")
    return "\n\n".join(parts)


def main(argv=None):
    from cli import ArgumentParser, check_out_dir, check_paths, seed_list
    p = ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out-dir", default="out/estimator",
                   help="where every run goes, with summary.json / summary.md / estimator_study.png (default: "
                        "%(default)s); re-running the same command reuses the finished runs (each has a result file)")
    p.add_argument("--demo-dir", default=None,
                   help="the output folder of `python runs/sudoku_demo.py --seeds 0,1,2`: its data and SFT "
                        "checkpoints are the taught-error setting (required unless --quick)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2",
                   help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--reuse-demo-rl", action="store_true",
                   help="take the taught-error setting's d1 and control rows from --demo-dir's summaries instead of "
                        "running them again")
    p.add_argument("--same-steps", default="", choices=["", "add-skill", "taught-error", "add-skill,taught-error"],
                   help="settings where the trajectory estimator also runs for as many rounds as d1 (~6x d1's "
                        "compute): add-skill, taught-error or both, comma-separated (default: none)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests): tiny sizes, no claims")
    args = p.parse_args(argv)
    seeds = args.seeds
    if args.demo_dir is None and not args.quick:
        p.error("--demo-dir is required (the output folder of `python runs/sudoku_demo.py --seeds 0,1,2`)")
    check_paths(p, "--demo-dir", args.demo_dir)
    check_out_dir(p, "--out-dir", args.out_dir)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sizes = QUICK if args.quick else FULL
    out = Path(args.out_dir)
    study = run_study(out, Path(args.demo_dir) if args.demo_dir else None, seeds, sizes, args.reuse_demo_rl,
                      tuple(s for s in args.same_steps.split(",") if s))
    write_json(out / "summary.json", study)
    md = report(study)
    (out / "summary.md").write_text(md + "\n")
    plot_study(study, out / "estimator_study.png")
    print("\n" + md)
    return study


if __name__ == "__main__":
    from cli import run_cli
    run_cli(main)
