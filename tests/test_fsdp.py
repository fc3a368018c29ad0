"""Full fine-tuning with FSDP2 (--fsdp) on CPU: 2 gloo processes, tiny model.

- sft.py: a 2-process FSDP run equals a 1-process run with the same global batch (losses, gradient norms,
  updated weights); a run resumed from a sharded checkpoint repeats the uninterrupted run's losses; the exported
  HF-layout model gives the trained sharded model's logits, and the offline --export gives the same files.
- diffu_grpo.py --lora-r 0 --beta 0.04 (frozen reference copy): FSDP and plain DDP (the output head is called
  outside DDP's forward in completion_logprobs) both equal 1 process.
- memory_budget: parameter count from the config, the sharded/replicated arithmetic, the refusal.
Run as a script under torchrun, this file is the worker that computes the sharded model's logits.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import Config, LLaDA, make_char_tokenizer, param_count, preset_config
from train_utils import (check_memory_budget, is_sharded_checkpoint, load_checkpoint_state, load_sharded_checkpoint,
                         memory_budget, shard_fsdp)
from tests.helpers import torchrun  # noqa: E402


def rows(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]


def by_step(out, key):
    return {r["step"]: r[key] for r in rows(out) if key in r}


def assert_same_weights(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


# ----------------------------------------------------------------------------- the memory budget (pure)


def test_memory_budget_arithmetic(monkeypatch):
    tiny = preset_config("tiny", vocab_size=300, embedding_size=300)
    assert param_count(tiny) == LLaDA(tiny).num_params()
    cfg = Config()  # LLaDA-8B
    n = param_count(cfg)
    assert 8.0e9 < n < 8.05e9
    common = dict(micro_batch=1, seq_len=456, logit_rows=512, grad_checkpointing=True)
    ddp = memory_budget(cfg, 8, 0, reference=True, **common)
    fsdp = memory_budget(cfg, 8, 0, fsdp=True, reference=True, **common)
    lora = memory_budget(cfg, 8, 128, lora_targets=("q_proj", "k_proj", "v_proj", "up_proj"), **common)
    assert fsdp["parameters"] == 4 * n / 8 and fsdp["optimizer"] == 8 * n / 8 and fsdp["reference"] == 2 * n / 8
    assert ddp["parameters"] == 4 * n and ddp["optimizer"] == 8 * n and ddp["reference"] == 2 * n
    assert ddp["total"] > 150 * 2**30 > 80 * 2**30 > fsdp["total"]  # why full fine-tuning needs sharding
    adapters = 32 * 128 * (3 * 2 * 4096 + 4096 + 12288)
    assert lora["parameters"] == 2 * n + 4 * adapters and lora["optimizer"] == 8 * adapters and lora["reference"] == 0
    # grad accumulation under FSDP keeps unsharded fp32 gradients; more ranks shard more
    assert memory_budget(cfg, 8, 0, fsdp=True, grad_accum=2)["grad_accumulation"] == 4 * n
    assert memory_budget(cfg, 16, 0, fsdp=True)["total"] < memory_budget(cfg, 8, 0, fsdp=True)["total"]
    assert all(v >= 0 for v in fsdp.values()) and fsdp["total"] == sum(v for k, v in fsdp.items() if k != "total")

    assert check_memory_budget(ddp, "cpu").startswith("per-GPU memory budget")  # CPU: printed, never refused

    class Props:  # an 80 GB GPU
        name, total_memory = "H100", 80 * 10**9
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    check_memory_budget(fsdp, "cuda:0")
    with pytest.raises(MemoryError, match=r"optimizer 59\.7 .* = 165\.0\nthis does not fit H100"):
        check_memory_budget(ddp, "cuda:0")


# ----------------------------------------------------------------------------- sft.py


def sft_args(data, out, *extra):
    return ["--init-from-scratch", "tiny", "--data", data, "--out-dir", out, "--val-frac", "0.1", "--device", "cpu",
            "--dtype", "float32", "--lora-r", 0, "--lr", 1e-3, "--epochs", 1, "--max-steps", 4, "--eval-every", 2,
            "--save-every", 2, *extra]


IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [126, 126, 11, 40, 41, 42, 43, 44, 45, 46]]) % 90 + 7
AM = torch.tensor([[1] * 10, [0, 0] + [1] * 8])


def test_sft_fsdp_equals_one_process_resumes_and_exports(sort_jsonl, tmp_path):
    from sft import main
    main([str(a) for a in sft_args(sort_jsonl, tmp_path / "one", "--batch-size", 4, "--grad-accum", 1)])
    fsdp = ("--batch-size", 1, "--grad-accum", 2, "--fsdp", "--grad-checkpointing")  # checkpointed sharded blocks
    torchrun(ROOT / "sft.py", *sft_args(sort_jsonl, tmp_path / "two", *fsdp, "--merge"), cwd=tmp_path)
    # 1. same global batch, 1 process (plain) vs 2 processes (sharded): losses, grad norms, updated weights
    for key, tol in [("loss", dict(abs=1e-5)), ("val_loss", dict(abs=1e-5)), ("grad_norm", dict(rel=1e-4))]:
        one, two = by_step(tmp_path / "one", key), by_step(tmp_path / "two", key)
        assert sorted(one) == sorted(two) and one == pytest.approx(two, **tol), key
    step4 = tmp_path / "two" / "step-000004"
    assert is_sharded_checkpoint(step4) and (step4 / "state.json").is_file() and (step4 / "config.json").is_file()
    assert not list((tmp_path / "two").glob("*.tmp*"))
    merged = load_file(tmp_path / "two" / "merged" / "model.safetensors")
    # Adam turns rounding noise of near-zero gradients into O(lr) steps (see test_sft): compare at lr / 10
    assert_same_weights(load_file(tmp_path / "one" / "step-000004" / "model.safetensors"), merged, atol=1e-4)

    # 2. resume from the sharded step-2 checkpoint: the same losses as the uninterrupted run
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "two" / "step-000002", tmp_path / "cut" / "step-000002")
    torchrun(ROOT / "sft.py", *sft_args(sort_jsonl, tmp_path / "cut", *fsdp, "--resume", "auto"), cwd=tmp_path)
    full, cut = by_step(tmp_path / "two", "loss"), by_step(tmp_path / "cut", "loss")
    assert sorted(cut) == [3, 4] and all(abs(cut[s] - full[s]) < 1e-6 for s in cut), (full, cut)
    assert by_step(tmp_path / "cut", "val_loss")[4] == pytest.approx(by_step(tmp_path / "two", "val_loss")[4], abs=1e-6)

    # 3. export: the gathered HF model gives the trained sharded model's logits; the offline --export the same files
    torchrun(__file__, step4, tmp_path / "sharded_logits.pt", cwd=tmp_path)
    exported = LLaDA.from_pretrained(tmp_path / "two" / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(IDS, AM), torch.load(tmp_path / "sharded_logits.pt"), rtol=0, atol=1e-6)
    main(["--export", str(step4), "--dtype", "float32"])
    assert_same_weights(load_file(tmp_path / "two" / "step-000004-hf" / "model.safetensors"), merged, atol=0)
    with pytest.raises(ValueError, match="FSDP shards"):  # a plain run refuses a sharded checkpoint, clearly
        load_checkpoint_state(step4, exported)


def sharded_logits(ckpt: Path, out: Path):
    """Worker (2 processes): rebuild the sharded model, load the checkpoint, save rank 0's logits of IDS."""
    dist.init_process_group("gloo")
    model = shard_fsdp(LLaDA(Config.from_json(ckpt / "config.json")), "cpu")
    load_sharded_checkpoint(ckpt, model, torch.optim.AdamW(model.parameters()))
    with torch.no_grad():
        logits = model.eval()(IDS, AM)
    if dist.get_rank() == 0:
        torch.save(logits, out)
    dist.barrier()
    dist.barrier()  # a second one: gloo teardown race (see sft.py)
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- diffu_grpo.py, full fine-tuning


@pytest.fixture(scope="module")
def grpo_one(tmp_path_factory):
    """The 1-process run every 2-process run is compared with, and the args that made it."""
    import data
    from diffu_grpo import main
    folder = tmp_path_factory.mktemp("grpo")
    data.write_sudoku_csv(folder / "sudoku.csv", data.generate_sudoku(40, blanks=(4, 8), seed=0))
    args = lambda out, *extra: [  # noqa: E731
        "--init", "tiny", "--task", "sudoku", "--train-path", folder / "sudoku.csv", "--style", "compact",
        "--gen-length", 16, "--block-length", 8, "--diffusion-steps", 8, "--prompts-per-step", 2,
        "--num-generations", 4, "--micro-batch-size", 2, "--lora-r", 0, "--eval-every", 0, "--random-reward",
        "--lr", 1e-3, "--warmup-steps", 0, "--max-steps", 2, "--mu", 2, "--beta", 0.04, "--out-dir", out, *extra]
    main([str(a) for a in args(folder / "one")])
    return folder, args


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_grpo_full_finetuning_two_processes_equal_one(grpo_one, mode):
    folder, args = grpo_one
    extra = ("--fsdp", "--grad-checkpointing", "--merge") if mode == "fsdp" else ()
    torchrun(ROOT / "diffu_grpo.py", *args(folder / mode, *extra), cwd=folder)
    for a, b in zip(rows(folder / "one"), rows(folder / mode), strict=True):
        assert a.keys() == b.keys()  # round statistics (reward, length) on a round's first optimizer step only
        for key in {"reward", "loss", "kl", "ratio", "completion_len", "grad_norm"} & a.keys():
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert rows(folder / "one")[-1]["kl"] > 0  # the reference term is live: policy and frozen copy differ
    # every weight, the output head included (its gradient is computed outside the model's forward)
    got = load_file(folder / mode / ("merged" if mode == "fsdp" else "step-000002") / "model.safetensors")
    assert_same_weights(load_file(folder / "one" / "step-000002" / "model.safetensors"), got, atol=1e-5)
    start = LLaDA(preset_config("tiny", make_char_tokenizer())).init_weights(42)  # diffu_grpo's --init tiny
    moved = got["model.transformer.ff_out.weight"] - start.transformer.ff_out.weight.detach()
    assert moved.abs().max() > 1e-4  # the head was trained, not merely equal because untouched


if __name__ == "__main__":
    sharded_logits(Path(sys.argv[1]), Path(sys.argv[2]))
