"""The data files users have, read through data.py's local-path options: datasets' to_json output (JSON Lines
named .json), save_to_disk folders, gzip-compressed files such as HumanEval.jsonl.gz, s1K-1.1's field names,
and a local copy of d1's Countdown test file for the overlap filter. Every file is a small one written here."""
import gzip
import json
import sys

import pytest

import data

GSM8K = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(12)]
HUMANEVAL = [{"task_id": f"HumanEval/{i}", "prompt": f'def f{i}(x):\n    """Return x + {i}."""\n',
              "canonical_solution": f"    return x + {i}\n", "entry_point": f"f{i}",
              "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n"} for i in range(3)]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_json_lines_named_json_and_json_arrays(tmp_path):
    want = data.load_task("gsm8k", "test", _write(tmp_path / "g.jsonl", jsonl(GSM8K)))
    lines = data.load_task("gsm8k", "test", _write(tmp_path / "lines.json", jsonl(GSM8K)))  # Dataset.to_json's layout
    array = data.load_task("gsm8k", "test", _write(tmp_path / "array.json", json.dumps(GSM8K, indent=1)))
    assert lines == array == want and len(want) == 12
    with pytest.raises(ValueError, match=r"lines\.json: row 3: invalid JSON"):
        data.read_rows(_write(tmp_path / "lines.json", jsonl(GSM8K[:2]) + "{oops\n"))


def test_dataset_to_json_output(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(GSM8K).to_json(tmp_path / "gsm8k.json")  # JSON Lines, despite the name
    assert data.load_task("gsm8k", "test", tmp_path / "gsm8k.json") == data.load_task(
        "gsm8k", "test", _write(tmp_path / "g.jsonl", jsonl(GSM8K)))


def test_save_to_disk_folders(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    want = data.load_task("gsm8k", "test", _write(tmp_path / "g.jsonl", jsonl(GSM8K)))
    datasets.Dataset.from_list(GSM8K).save_to_disk(tmp_path / "ds")
    assert data.load_task("gsm8k", "test", tmp_path / "ds") == want
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K[:4]),
                          "test": datasets.Dataset.from_list(GSM8K)}).save_to_disk(tmp_path / "dd")
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]: pass one split's folder, e\.g\. .*dd/train"):
        data.load_task("gsm8k", "test", tmp_path / "dd")
    assert data.load_task("gsm8k", "test", tmp_path / "dd" / "test") == want
    datasets.DatasetDict({"test": datasets.Dataset.from_list(GSM8K)}).save_to_disk(tmp_path / "one")
    assert data.load_task("gsm8k", "test", tmp_path / "one") == want
    assert "one split, 'test'" in capsys.readouterr().out
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not one written by datasets' save_to_disk"):
        data.read_rows(tmp_path / "plain")


def test_save_to_disk_without_datasets_installed(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(ImportError, match=r"needs `datasets` \(pip install datasets\)"):
        data.read_rows(tmp_path / "ds")


def test_gzip_files_humaneval_release(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"  # the name and layout of openai/human-eval's data file
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(jsonl(HUMANEVAL))
    ex = data.load_task("humaneval", "test", path)
    assert [e["id"] for e in ex] == ["humaneval/test/0", "humaneval/test/1", "humaneval/test/2"]
    assert ex[2]["target"]["tests"][0].rstrip().endswith("check(f2)") and "def f2(x):" in ex[2]["prompt"]
    sudoku = data.synthetic_task("sudoku", "test", 5)
    plain = data.write_sudoku_csv(tmp_path / "s.csv", sudoku)
    with gzip.open(tmp_path / "s.csv.gz", "wt", newline="") as f:
        f.write(plain.read_text())
    assert data.load_task("sudoku", "test", tmp_path / "s.csv.gz") == data.load_task("sudoku", "test", plain)
    (tmp_path / "x.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(ValueError, match=r"unsupported extension '\.parquet\.gz'"):
        data.read_rows(tmp_path / "x.parquet.gz")


def test_s1k_1_1_field_names(tmp_path):
    # s1K-1.1 (simplescaling/s1K-1.1): DeepSeek-R1 traces under deepseek_*, the original Gemini ones under gemini_*
    row = {"question": "What?", "solution": "42", "cot_type": "math", "source_type": "x", "metadata": "{}",
           "gemini_thinking_trajectory": "gemini thinks", "gemini_attempt": "41",
           "deepseek_thinking_trajectory": "deepseek thinks", "deepseek_attempt": "42"}
    pairs = data.load_s1k(_write(tmp_path / "s1k11.jsonl", jsonl([row])))
    assert pairs[0]["prompt"] == data.SFT_SYSTEM + "\n\nWhat?"
    assert pairs[0]["answer"] == "<reasoning>deepseek thinks</reasoning>\n<answer>42</answer>"
    bad = {k: v for k, v in row.items() if k != "deepseek_attempt"}
    with pytest.raises(ValueError, match="row 1: missing field 'deepseek_attempt'"):
        data.load_s1k(_write(tmp_path / "bad.jsonl", jsonl([bad])))
    with pytest.raises(ValueError, match="missing field 'thinking_trajectories' .*deepseek_thinking_trajectory"):
        data.load_s1k(_write(tmp_path / "neither.jsonl", jsonl([{"question": "q", "attempt": "a"}])))


def test_countdown_overlap_filter_with_a_local_test_file(tmp_path):
    test_file = _write(tmp_path / "countdown_cd3_test.jsonl", jsonl([{"input": "1,2,3", "output": "6"}]))
    rows = [{"nums": [i, i + 1, i + 2], "target": i} for i in range(10, 60)] + [{"nums": [3, 1, 2], "target": 6}]
    train = _write(tmp_path / "train.jsonl", jsonl(rows))
    gsm = _write(tmp_path / "g.jsonl", jsonl(GSM8K))
    mix = data.load_tasks("gsm8k,countdown", "train", f"{gsm},{train}", test_path=test_file)  # no download
    keys = {data.countdown_key(*e["target"]) for e in mix if e["task"] == "countdown"}
    assert len(keys) == 45 and data.countdown_key([1, 2, 3], 6) not in keys  # 51 - 5 (val) - 1 (overlap)


def test_empty_files_are_refused(tmp_path):
    for name, text in [("e.jsonl", ""), ("e.json", "\n"), ("e.csv", "question,answer\n")]:
        with pytest.raises(ValueError, match=rf"{name}: the file has no rows"):
            data.read_rows(_write(tmp_path / name, text))


def _write(path, text):
    path.write_text(text)
    return path


def test_hub_failures_are_one_error_without_the_hub_chain(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="OfflineModeIsEnabled.*pass path=") as e:
        data.load_task("gsm8k", "test")
    assert e.value.__cause__ is None and e.value.__suppress_context__

    def bug(*args, **kwargs):
        raise KeyError("a bug, not the network")

    monkeypatch.setattr(datasets, "load_dataset", bug)
    with pytest.raises(KeyError):  # unexpected errors keep their own type and traceback
        data.load_task("gsm8k", "test")
