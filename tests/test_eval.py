"""eval.py: scoring and d1's Sudoku micro-average, --rescore without a model, sharding (the function and a real
2-process gloo run equal to 1 process), output files of a tiny-model run, checkpoint listing and selection."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval as ev
from data import generate_sudoku, write_sudoku_csv
from tests.helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
GRID = "1234341221434321"  # a valid 4x4 Sudoku grid
GEN = ["--task", "sudoku", "--style", "compact", "--gen-length", "16", "--block-length", "8", "--batch-size", "2",
       "--device", "cpu", "--dtype", "float32"]


def run(*args):
    out = subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)  # never wait on an interactive prompt
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def hand_made_records():
    """Known verdicts: gsm8k 2/3, countdown 1/2; Sudoku 2/2 + 2/8 blank cells = 4/10 (per-item mean 0.625)."""
    rows = [("gsm8k", "<reasoning>6*7</reasoning>\n<answer>\n\\boxed{42}\n</answer>", "#### 42", 1.0),
            ("gsm8k", "<answer>\n7\n</answer>", "#### 42", 0.0),
            ("gsm8k", "so \\boxed{-3}", "Lost 3 apples.\n#### -3", 1.0),
            ("countdown", "<answer>\n\\boxed{3*5+7}\n</answer>", [[3, 5, 7], 22], 1.0),
            ("countdown", "<answer>\n\\boxed{3+5+7}\n</answer>", [[3, 5, 7], 22], 0.0),
            ("sudoku", f"<answer>\n{GRID}\n</answer>", ["0234301221434321", GRID], 1.0),
            ("sudoku", "<answer>\n1200000000000000\n</answer>", ["0000000021434321", GRID], 0.25)]
    # stored verdicts are deliberately wrong (as if an old parser had written them): rescoring must fix them
    return [{"index": i, "id": f"{t}/{i}", "task": t, "gen_length": 128, "seed": 0, "prompt": "p", "completion": c,
             "parsed": "stale", "target": tgt, "score": 0.5, "want": want} for i, (t, c, tgt, want) in enumerate(rows)]


def test_scoring_and_sudoku_micro_average():
    records = ev.score_records(json.loads(json.dumps(hand_made_records())))  # JSON round trip: tuples -> lists
    assert [r["score"] for r in records] == [r["want"] for r in records]
    assert records[5]["parsed"] == GRID and records[0]["parsed"] != "stale"
    summary = ev.summarize(records)
    assert summary["gsm8k"][128]["accuracy"] == pytest.approx(2 / 3)
    assert summary["countdown"][128]["accuracy"] == pytest.approx(0.5)
    assert summary["sudoku"][128]["accuracy"] == pytest.approx(0.4)  # micro-average, not (1 + 0.25) / 2
    assert summary["sudoku"][128]["n"] == 2 and summary["sudoku"][128]["std"] == 0.0


def test_seeds_mean_and_std():
    recs = [{"task": "gsm8k", "gen_length": 64, "seed": s, "score": float(v), "target": "#### 1"}
            for s, vals in [(0, [1, 1]), (1, [1, 0]), (2, [0, 0])] for v in vals]
    row = ev.summarize(recs)["gsm8k"][64]
    assert row["accuracy"] == pytest.approx(0.5) and row["std"] == pytest.approx(0.5)  # sample std of 1, .5, 0
    assert row["seeds"] == [0, 1, 2] and row["n"] == 2


def test_rescore_cli_without_model(tmp_path):
    gen = tmp_path / "generations.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in hand_made_records()))
    out = run("--rescore", gen, "--model", tmp_path / "no-such-model")  # a model load would fail
    assert "| sudoku | 128 | 40.00 |" in out
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["model"]["sudoku"]["128"]["accuracy"] == pytest.approx(0.4)
    assert results["model"]["gsm8k"]["128"]["accuracy"] == pytest.approx(2 / 3)
    rescored = ev.read_jsonl(gen)  # rewritten in place with the current verdicts
    assert [r["score"] for r in rescored] == [r["want"] for r in rescored]
    assert (tmp_path / "results.md").read_text().startswith("| checkpoint |")


@pytest.mark.parametrize("n", range(0, 11))
def test_shard_indices_partition(n):
    for world in range(1, 5):
        shards = [ev.shard_indices(n, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))  # union == all, no duplicates
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.fixture(scope="module")
def sudoku_file(tmp_path_factory):
    # 7 items (uneven over 2 processes), different numbers of blanks
    return write_sudoku_csv(tmp_path_factory.mktemp("data") / "sudoku.csv", generate_sudoku(7, blanks=(4, 8), seed=1))


@pytest.fixture(scope="module")
def one_process(tiny_dir, sudoku_file, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("one")
    stdout = run("--model", tiny_dir, "--data-path", sudoku_file, "--out-dir", out_dir, "--limit", 5, *GEN)
    return out_dir, stdout


def test_tiny_run_writes_outputs(one_process):
    out_dir, stdout = one_process
    records = ev.read_jsonl(out_dir / "generations.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    keys = {"id", "task", "gen_length", "seed", "prompt", "completion", "parsed", "target", "score", "checkpoint"}
    assert all(keys <= r.keys() and r["gen_length"] == 16 for r in records)
    results = json.loads((out_dir / "results.json").read_text())
    (row,) = results["results"].values()
    assert row["sudoku"]["16"]["n"] == 5
    assert row["sudoku"]["16"]["accuracy"] == pytest.approx(ev.accuracy(records))
    table = (out_dir / "results.md").read_text()
    assert "| sudoku | 16 |" in table and "| sudoku | 16 |" in stdout


def test_two_process_gloo_equals_one_process(tiny_dir, sudoku_file, tmp_path, one_process):
    torchrun("eval.py", "--model", tiny_dir, "--data-path", sudoku_file, "--out-dir", tmp_path, "--limit", 5, *GEN)
    two = ev.read_jsonl(tmp_path / "generations.jsonl")
    one = ev.read_jsonl(one_process[0] / "generations.jsonl")
    assert [r["index"] for r in two] == [0, 1, 2, 3, 4]  # every item exactly once (5 items over 2 ranks)
    assert [(r["id"], r["completion"], r["score"]) for r in two] == [(r["id"], r["completion"], r["score"]) for r in one]


def test_checkpoint_listing_and_validation_selection(tmp_path):
    for step in (100, 2, 10):
        (tmp_path / f"step-{step:06d}").mkdir()
        (tmp_path / f"step-{step:06d}" / "adapter_config.json").write_text("{}")
    (tmp_path / "step-000005.tmp123").mkdir()  # an unfinished write is not a checkpoint
    ckpts = ev.list_checkpoints(str(tmp_path))
    assert [c.name for c in ckpts] == ["step-000002", "step-000010", "step-000100"]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 2, "val_accuracy": 0.3}, {"step": 5, "loss": 1.0}, {"step": 7, "val_accuracy": 0.9},
        {"step": 10, "val_accuracy": 0.5}, {"step": 100, "val_accuracy": 0.5}]))
    assert ev.select_by_validation(ckpts, metrics, "val_accuracy").name == "step-000010"  # step 7 has no checkpoint
    assert ev.select_by_validation(ckpts, metrics, "other") is None
    # the results.json of an `eval.py --split val` run: mean accuracy over tasks and lengths
    results = {"step-000002": {"sudoku": {"16": {"accuracy": 0.9}, "32": {"accuracy": 0.1}}},
               "step-000100": {"sudoku": {"16": {"accuracy": 0.6}, "32": {"accuracy": 0.6}}}}
    val = tmp_path / "val.json"
    val.write_text(json.dumps({"args": {"split": "val"}, "results": results}))
    assert ev.select_by_validation(ckpts, val).name == "step-000100"
    val.write_text(json.dumps({"args": {"split": "test"}, "results": results}))
    with pytest.raises(ValueError, match="split"):  # selecting on the test set is refused
        ev.select_by_validation(ckpts, val)


def test_checkpoints_cli_one_row_each(tiny_dir, sudoku_file, tmp_path):
    run_dir = tmp_path / "run"
    for step in (1, 2):
        shutil.copytree(tiny_dir, run_dir / f"step-{step:06d}")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "val_accuracy": 0.7}) + "\n")
    out = run("--model", tiny_dir, "--checkpoints", run_dir, "--data-path", sudoku_file, "--out-dir", tmp_path / "o",
              "--limit", 2, *GEN)
    assert "step-000001 (val-selected) | sudoku | 16 |" in out and "step-000002 (last) | sudoku | 16 |" in out
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(results["results"]) == ["step-000001", "step-000002"]
