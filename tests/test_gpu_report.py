"""bench.py gpu-report, the command a session lent a GPU runs first: its CPU smoke run (every section, labelled
CPU), fail-soft sections, and time boxes that stop a slow section without eating the others' time."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import bench
from model import LLaDA, LoRALinear, preset_config
from tests.helpers import ROOT


def test_cpu_smoke_run_produces_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "bench.py", "gpu-report", "--device", "cpu", "--preset", "tiny", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "gpu-report.json").read_text())
    assert data["meta"]["device_type"] == "cpu" and data["meta"]["params"] > 0
    assert list(data["sections"]) == list(bench.SECTIONS)
    for name, rec in data["sections"].items():
        assert rec["status"] == "ok", (name, rec.get("error"), rec.get("traceback"))
        assert rec["tables"] and all(t["rows"] for t in rec["tables"]) and rec["summary"], name
    md = (tmp_path / "gpu-report.md").read_text()
    assert "CPU smoke test of the command, NOT a GPU measurement" in md and "## Summary (CPU)" in md
    for i, name in enumerate(bench.SECTIONS):
        assert f"## {i}. {bench.SECTION_TITLES[name]} (CPU): ok" in md
    sec = {name: rec["data"] for name, rec in data["sections"].items()}
    # memory: on a CPU the tensors' own bytes are measured, and they are exactly what the budget computes
    weights, lora = sec["memory"][0], sec["memory"][1]
    assert weights["measured_bytes"] == weights["budget_bytes"] and lora["measured_bytes"] == lora["budget_bytes"]
    assert len(sec["memory"]) == 8
    # sampler: the exact mode agrees with itself; on random weights the threshold commits one token per step
    modes = {d["mode"]: d for d in sec["sampler"]}
    shape = bench.REPORT_SHAPES["tiny"]
    assert list(modes) == ["exact", "prefix", "dual", "threshold"] and modes["exact"]["agreement"] == 1.0
    # the fixed-floor threshold rule never makes more model calls than the schedule (random weights: as many)
    assert modes["exact"]["calls"] == shape["steps"] and modes["threshold"]["calls"] == shape["steps"]
    # grpo: three phases and the projection of d1's GSM8K run
    proj = sec["grpo"][-1]
    assert [d["phase"] for d in sec["grpo"][:3]] == ["generation", "old/ref log-probs", "updates"]
    assert proj["rounds"] == 642 and proj["hours"] > 0 and proj["arithmetic_limit_hours"] > 0
    # numerics: bf16 differs from fp32, a little
    logits = sec["numerics"][0]
    assert 0 < logits["max_abs"] < 0.1 * logits["scale"] * 10
    # sdpa: the default backend ran with and without the mask, and says which kernel it was
    default = [d for d in sec["sdpa"] if d["backend"] == "default"]
    assert len(default) == 2 and all("scaled_dot_product" in d["op"] for d in default)


def run_report(tmp_path, *extra) -> dict:
    bench.main(["gpu-report", "--device", "cpu", "--preset", "tiny", "--out", str(tmp_path), *extra])
    return json.loads((tmp_path / "gpu-report.json").read_text())


def test_the_gpu_precision_path_runs_on_cpu(tmp_path):
    """bf16 weights, fp32 LoRA adapters, bf16 autocast: the path the 8B report takes on a GPU, here on a CPU."""
    data = run_report(tmp_path, "--dtype", "bfloat16", "--sections", "memory,grpo")
    assert data["meta"]["dtype"] == "bfloat16"
    for name, rec in data["sections"].items():
        assert rec["status"] == "ok", (name, rec.get("error"), rec.get("traceback"))
    weights = data["sections"]["memory"]["data"][0]
    assert weights["measured_bytes"] == weights["budget_bytes"]  # 2 bytes per parameter


def test_a_failing_section_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    def broken(rep, rec):
        bench.add_table(rec, "", ["what"]).append(["a figure measured before the failure"])
        raise ValueError("planted failure")
    monkeypatch.setitem(bench.SECTION_FUNCS, "numerics", broken)
    data = run_report(tmp_path, "--sections", "numerics,sdpa")
    numerics, sdpa = data["sections"]["numerics"], data["sections"]["sdpa"]
    assert numerics["status"] == "failed" and numerics["error"] == "ValueError: planted failure"
    assert "planted failure" in numerics["traceback"] and numerics["tables"][0]["rows"]  # partial results kept
    assert sdpa["status"] == "ok"
    md = (tmp_path / "gpu-report.md").read_text()
    assert "**failed**: `ValueError: planted failure`" in md and "Sections not ok: numerics: failed." in md


def test_a_slow_section_is_stopped_at_its_time_box_and_the_next_still_runs(tmp_path, monkeypatch):
    def endless(rep, rec):  # samples forever: the model's call counter stops it at the deadline
        ids, am = bench.rl_prompts(rep)
        opts = bench.rl_args(rep)
        opts.threshold = None
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60:
            bench.sample_mode(rep.model, [(list(range(len(ids))), ids, am)], "exact", 2, opts)
        raise AssertionError("not stopped")
    monkeypatch.setitem(bench.SECTION_FUNCS, "sampler", endless)
    monkeypatch.setitem(bench.SECTION_SHARE, "sampler", 0.01)  # a box of 1/31 of the budget; sdpa gets the rest
    monkeypatch.setitem(bench.SECTION_SHARE, "sdpa", 0.30)
    data = run_report(tmp_path, "--sections", "sampler,sdpa", "--budget", "31")
    sampler, sdpa = data["sections"]["sampler"], data["sections"]["sdpa"]
    assert sampler["status"] == "timed out" and "time box exceeded" in sampler["error"]
    assert sampler["time_box_s"] <= 1.1 and sampler["seconds"] < 10
    assert sdpa["status"] == "ok" and sdpa["time_box_s"] > 20 * sampler["time_box_s"]  # its share, not less


def test_time_boxes_share_what_is_left():
    names = ["memory", "sampler", "grpo"]
    share = {n: bench.SECTION_SHARE[n] / sum(bench.SECTION_SHARE[m] for m in names) for n in names}
    assert bench.time_box(100, names) == pytest.approx(100 * share["memory"])
    # A section that uses its whole box leaves the next ones exactly their shares; one that returns early gives
    # its leftover to them, in proportion.
    used = bench.time_box(100, names)
    assert bench.time_box(100 - used, names[1:]) == pytest.approx(100 * share["sampler"])
    assert bench.time_box(100 - 1, names[1:]) == pytest.approx(99 * share["sampler"] / (1 - share["memory"]))
    assert bench.time_box(-5, names) == 0
    assert sum(bench.SECTION_SHARE.values()) == pytest.approx(1) and set(bench.SECTION_SHARE) == set(bench.SECTIONS)


def test_lora_applied_leaves_the_model_as_it_came(tokenizer):
    m = LLaDA(preset_config("tiny", tokenizer)).init_weights(0).eval()
    weights = {n: p for n, p in m.named_parameters()}
    ids = torch.randint(0, 50, (2, 12))
    before = m(ids)
    with pytest.raises(RuntimeError, match="inside"):
        with bench.lora_applied(m, 4, 8.0, bench.RL_TARGETS, 0) as params:
            assert len(params) == 2 * 2 * len(bench.RL_TARGETS)
            m.train()
            m.gradient_checkpointing = True
            raise RuntimeError("inside")
    assert not any(isinstance(x, LoRALinear) for x in m.modules()) and not m.training
    assert not m.gradient_checkpointing
    assert all(p is weights[n] for n, p in m.named_parameters())  # the same tensors, no copy
    assert torch.equal(m(ids), before)
