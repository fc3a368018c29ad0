"""eval.py: scoring under both protocols (fixed and d1's) and d1's Sudoku micro-average, --rescore without a model
(old generations files included), one-line errors on empty inputs, sharding (the function and a real 2-process
gloo run equal to 1 process), output files of a tiny-model run (both decodings kept), checkpoint listing and
selection."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval as ev
from data import generate_sudoku, write_sudoku_csv
from model import make_char_tokenizer
from tests.helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
GRID = "1234341221434321"  # a valid 4x4 Sudoku grid
GEN = ["--task", "sudoku", "--style", "compact", "--gen-length", "16", "--block-length", "8", "--batch-size", "2",
       "--device", "cpu", "--dtype", "float32"]


def run(*args, returncode=0):
    out = subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)  # the timeout only catches a hang; no prompt waits
    assert out.returncode == returncode, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout if returncode == 0 else out.stderr


EOT, EOS = "<|eot_id|>", "<|endoftext|>"
PUZZLE = "0234301221434321"  # 2 blanks


def hand_made_records():
    """Known verdicts (fixed, d1): gsm8k 2/3 and 1/3 (d1 drops the minus of -3); countdown 1/2 both; Sudoku blank
    cells 2/2 + 2/8 + 2/2 = 6/12 fixed, 2/2 + 2/8 + 0/2 = 4/12 d1 (its fallback reads the puzzle restated in the
    reasoning of a cut-off answer). Completions are stored in both decodings, as eval.py writes them."""
    rows = [("gsm8k", "<reasoning>6*7</reasoning>\n<answer>\n\\boxed{42}\n</answer>" + EOT + EOS, "#### 42", 1.0, 1.0),
            ("gsm8k", "<answer>\n7\n</answer>" + EOT + EOS, "#### 42", 0.0, 0.0),
            ("gsm8k", "so \\boxed{-3}" + EOT, "Lost 3 apples.\n#### -3", 1.0, 0.0),
            ("countdown", "<answer>\n\\boxed{3*5+7}\n</answer>" + EOT, [[3, 5, 7], 22], 1.0, 1.0),
            ("countdown", "<answer>\n\\boxed{3+5+7}\n</answer>" + EOT, [[3, 5, 7], 22], 0.0, 0.0),
            ("sudoku", f"<answer>\n{GRID}\n</answer>" + EOT + EOS, [PUZZLE, GRID], 1.0, 1.0),
            ("sudoku", "<answer>\n1200000000000000\n</answer>" + EOT, ["0000000021434321", GRID], 0.25, 0.25),
            ("sudoku", f"Puzzle {PUZZLE}: fill 2 cells.\n</reasoning>\n<answer>\n{GRID}", [PUZZLE, GRID], 1.0, 0.0)]
    # stored verdicts are deliberately wrong (as if an old parser had written them): rescoring must fix them
    return [{"index": i, "id": f"{t}/{i}", "task": t, "gen_length": 128, "seed": 0, "prompt": "p",
             "completion": raw.replace(EOT, "").replace(EOS, ""), "raw_completion": raw, "parsed": "stale",
             "target": tgt, "score": 0.5, "score_d1": 0.5, "want": want, "want_d1": want_d1}
            for i, (t, raw, tgt, want, want_d1) in enumerate(rows)]


def test_scoring_both_protocols_and_sudoku_micro_average():
    records = ev.score_records(json.loads(json.dumps(hand_made_records())))  # JSON round trip: tuples -> lists
    assert [r["score"] for r in records] == [r["want"] for r in records]
    assert [r["score_d1"] for r in records] == [r["want_d1"] for r in records]
    assert records[5]["parsed"] == GRID and records[0]["parsed"] != "stale"
    assert records[7]["parsed"] == GRID and records[7]["parsed_d1"] == PUZZLE
    assert records[2]["parsed"] == records[2]["parsed_d1"] == "-3"
    summary = ev.summarize(records)
    assert summary["gsm8k"][128]["accuracy"] == pytest.approx(2 / 3)
    assert summary["gsm8k"][128]["accuracy_d1"] == pytest.approx(1 / 3)
    assert summary["countdown"][128]["accuracy"] == summary["countdown"][128]["accuracy_d1"] == pytest.approx(0.5)
    assert summary["sudoku"][128]["accuracy"] == pytest.approx(6 / 12)  # micro-average, not (1 + 0.25 + 1) / 3
    assert summary["sudoku"][128]["accuracy_d1"] == pytest.approx(4 / 12)
    assert summary["sudoku"][128]["n"] == 3 and summary["sudoku"][128]["std"] == summary["sudoku"][128]["std_d1"] == 0.0


def test_old_records_without_raw_completion():
    """A generations file written before both decodings were kept: fixed verdicts only, d1's left empty."""
    records = hand_made_records()
    for r in records:
        del r["raw_completion"]
    records = ev.score_records(records)
    assert [r["score"] for r in records] == [r["want"] for r in records]  # the fixed protocol reads either decoding
    assert all(r["score_d1"] is None and r["parsed_d1"] is None for r in records)
    row = ev.summarize(records)["gsm8k"][128]
    assert row["accuracy"] == pytest.approx(2 / 3) and row["accuracy_d1"] is None
    assert "| model | gsm8k | 128 | 66.67 | - |" in ev.format_table({"model": ev.summarize(records)})


def test_seeds_mean_and_std():
    recs = [{"task": "gsm8k", "gen_length": 64, "seed": s, "score": float(v), "score_d1": 1.0, "target": "#### 1"}
            for s, vals in [(0, [1, 1]), (1, [1, 0]), (2, [0, 0])] for v in vals]
    row = ev.summarize(recs)["gsm8k"][64]
    assert row["accuracy"] == pytest.approx(0.5) and row["std"] == pytest.approx(0.5)  # sample std of 1, .5, 0
    assert row["accuracy_d1"] == 1.0 and row["std_d1"] == 0.0
    assert row["seeds"] == [0, 1, 2] and row["n"] == 2
    assert "| m | gsm8k | 64 | 50.00 ± 50.00 | 100.00 ± 0.00 | 2 | 3 |" in ev.format_table({"m": ev.summarize(recs)})


def test_rescore_cli_without_model(tmp_path):
    gen = tmp_path / "generations.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in hand_made_records()))
    out = run("--rescore", gen, "--model", tmp_path / "no-such-model")  # a model load would fail
    assert "| gsm8k | 128 | 66.67 | 33.33 |" in out and "| sudoku | 128 | 50.00 | 33.33 |" in out  # fixed, d1
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["model"]["sudoku"]["128"]["accuracy"] == pytest.approx(0.5)
    assert results["model"]["sudoku"]["128"]["accuracy_d1"] == pytest.approx(1 / 3)
    assert results["model"]["gsm8k"]["128"]["accuracy"] == pytest.approx(2 / 3)
    rescored = ev.read_jsonl(gen)  # rewritten in place with the current verdicts
    assert [r["score"] for r in rescored] == [r["want"] for r in rescored]
    assert [r["score_d1"] for r in rescored] == [r["want_d1"] for r in rescored]
    assert (tmp_path / "results.md").read_text().startswith("| checkpoint | task | gen length | fixed (%) | d1 (%) |")
    # an old file (no raw_completion): fixed verdicts, a note, and "-" under d1
    for r in rescored:
        del r["raw_completion"]
    gen.write_text("".join(json.dumps(r) + "\n" for r in rescored))
    out = run("--rescore", gen)
    assert "8 records have no raw_completion" in out and "| gsm8k | 128 | 66.67 | - |" in out


def test_empty_inputs_are_one_line_errors(tmp_path, tiny_dir):
    empty = write_sudoku_csv(tmp_path / "empty.csv", [])  # a header, no rows
    err = run("--model", tiny_dir, "--task", "sudoku", "--data-path", empty, "--device", "cpu",
              "--out-dir", tmp_path / "o", returncode=1)
    assert len(err.strip().splitlines()) == 1 and str(empty) in err  # the data loader refuses a file without rows
    assert not (tmp_path / "o").exists()  # refused before anything was written
    gen = tmp_path / "generations.jsonl"
    gen.write_text("\n")
    err = run("--rescore", gen, returncode=1)
    assert err.strip() == f"eval.py: {gen} holds no generation records: nothing to rescore"
    err = run("--rescore", tmp_path / "missing.jsonl", returncode=2)  # an argument error, checked at parse time
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "missing.jsonl") in err


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
    keys = {"id", "task", "gen_length", "seed", "prompt", "completion", "raw_completion", "parsed", "target", "score",
            "parsed_d1", "score_d1", "checkpoint"}
    assert all(keys <= r.keys() and r["gen_length"] == 16 for r in records)
    special = make_char_tokenizer().all_special_tokens  # the test tokenizer: LLaDA's special tokens, one per id
    for r in records:  # the raw decoding is the plain one with the special tokens left in
        assert re.sub("|".join(map(re.escape, special)), "", r["raw_completion"]) == r["completion"]
        assert 0.0 <= r["score_d1"] <= 1.0
    results = json.loads((out_dir / "results.json").read_text())
    (row,) = results["results"].values()
    assert row["sudoku"]["16"]["n"] == 5
    assert row["sudoku"]["16"]["accuracy"] == pytest.approx(ev.accuracy(records))
    assert row["sudoku"]["16"]["accuracy_d1"] == pytest.approx(ev.accuracy(records, "score_d1"))
    table = (out_dir / "results.md").read_text()
    assert "| sudoku | 16 |" in table and "| sudoku | 16 |" in stdout


def test_two_process_gloo_equals_one_process(tiny_dir, sudoku_file, tmp_path, one_process):
    torchrun("eval.py", "--model", tiny_dir, "--data-path", sudoku_file, "--out-dir", tmp_path, "--limit", 5, *GEN)
    two = ev.read_jsonl(tmp_path / "generations.jsonl")
    one = ev.read_jsonl(one_process[0] / "generations.jsonl")
    assert [r["index"] for r in two] == [0, 1, 2, 3, 4]  # every item exactly once (5 items over 2 ranks)
    keys = ("id", "completion", "raw_completion", "score", "score_d1")
    assert [[r[k] for k in keys] for r in two] == [[r[k] for k in keys] for r in one]


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
