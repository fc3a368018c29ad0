"""data.py: exact d1 prompts, local-file loading and validation, splits, Countdown dedup, generators."""
import ast
import csv
import json
import operator
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import data

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
PROMPTS_JSON = SHARED / "d1_prompts.json"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def safe_eval(expr: str) -> Fraction:
    """Exact value of an expression of integers, + - * / and parentheses; anything else raises."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        raise ValueError(f"not allowed: {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval").body)


def numbers_in(expr: str) -> list[int]:
    return sorted(n.value for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Constant))


# ----------------------------------------------------------------------------- prompts

FIELDS = {"gsm8k": {"question": "Q?"}, "math": {"problem": "P?"},
          "countdown": {"nums": [30, 100, 93], "target": 23}, "sudoku": {"puzzle": "3102200002100320"}}


@pytest.mark.skipif(not PROMPTS_JSON.exists(), reason="d1_prompts.json not present next to the repo")
def test_prompts_equal_d1_json():
    p = json.loads(PROMPTS_JSON.read_text())
    sub = {"question": "Q?", "problem": "P?", "nums": "[30, 100, 93]", "target": "23", "puzzle": "3102200002100320",
           "rl_format_prefix": p["rl_format_prefix"], "rl_sudoku_system": p["rl_sudoku_system"],
           "sft_system": p["sft_system"]}

    def fill(template):
        for k, v in sub.items():
            template = template.replace("{" + k + "}", v)
        return template

    for task in data.D1_TASKS:
        assert data.user_message(task, FIELDS[task], "rl") == fill(p[f"rl_{task}_user"]), task
        expected = p["eval_user"].replace("{system}", p[f"eval_{task}_system"]).replace(
            "{question}", fill(p["eval_questions"][task]))
        assert data.user_message(task, FIELDS[task], "eval") == expected, task
    assert data.EVAL_PREFILL == p["eval_prefill"]
    assert data.sft_user_message("Q?") == fill(p["sft_user"])
    assert data.sft_answer("T", "A") == p["sft_answer"].replace("{thinking_trajectory}", "T").replace("{attempt}", "A")


def test_compact_prompts():
    assert data.user_message("sudoku", FIELDS["sudoku"], "compact") == "3102200002100320"
    assert data.user_message("countdown", FIELDS["countdown"], "compact") == "Numbers: [30, 100, 93]\nTarget: 23"
    assert data.user_message("gsm8k", FIELDS["gsm8k"], "compact") == "Q?"
    with pytest.raises(ValueError, match="style"):
        data.user_message("gsm8k", FIELDS["gsm8k"], "fancy")


def test_format_prompt(tokenizer):
    for prefill in ("", data.EVAL_PREFILL):
        text = data.format_prompt(tokenizer, data.user_message("math", FIELDS["math"], "eval"), prefill)
        assert text.startswith("<|startoftext|><|start_header_id|>user")
        assert text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" + prefill)
        assert text.count("<|start_header_id|>") == 2


# ----------------------------------------------------------------------------- local files

def gsm8k_rows(n):
    return [{"question": f"q{i}", "answer": f"work\n#### {i}"} for i in range(n)]


def test_gsm8k_jsonl_splits(tmp_path):
    f = write_jsonl(tmp_path / "gsm8k.jsonl", gsm8k_rows(50))
    test = data.load_task("gsm8k", "test", f)
    assert [e["id"] for e in test[:2]] == ["gsm8k/test/0", "gsm8k/test/1"] and test[1]["target"] == "work\n#### 1"
    assert test[0]["prompt"] == data.RL_FORMAT + "\n\nq0"
    train, val = data.load_task("gsm8k", "train", f), data.load_task("gsm8k", "val", f)
    assert len(val) == 5 and len(train) == 45  # min(256, n // 10)
    assert not {e["id"] for e in train} & {e["id"] for e in val}
    assert {e["id"] for e in train} | {e["id"] for e in val} == {f"gsm8k/train/{i}" for i in range(50)}
    assert train == data.load_task("gsm8k", "train", f)  # deterministic
    # val = the tail of numpy's default_rng(42) permutation, i.e. datasets' shuffle(seed=42)
    perm = np.random.default_rng(42).permutation(50)
    assert [e["id"] for e in val] == [f"gsm8k/train/{j}" for j in perm[45:]]
    assert len(data.load_task("gsm8k", "train", f, limit=7)) == 7


def test_gsm8k_bare_answer_gets_marker(tmp_path):
    f = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": 18}])
    assert data.load_task("gsm8k", "test", f)[0]["target"] == "#### 18"


def test_shuffle_matches_datasets():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"i": list(range(40))}).shuffle(seed=data.SHUFFLE_SEED)
    assert ds["i"] == np.random.default_rng(data.SHUFFLE_SEED).permutation(40).tolist()


def test_math_json_and_csv(tmp_path):
    rows = [{"problem": "1+1?", "solution": "It is $\\boxed{2}$."}, {"problem": "2+2?", "answer": "4"}]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    ex = data.load_task("math", "test", tmp_path / "m.json", style="eval")
    assert [e["target"] for e in ex] == ["It is $\\boxed{2}$.", "4"]
    assert ex[0]["prompt"].endswith("\n\n1+1?") and ex[0]["prompt"].startswith("You are a math expert")
    write_csv(tmp_path / "m.csv", [{"problem": "1+1?", "solution": "2"}])
    assert data.load_task("math", "test", tmp_path / "m.csv")[0]["target"] == "2"


def test_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pd.DataFrame({"nums": [[1, 2, 3], [4, 5, 6]], "target": [6, 15]}).to_parquet(tmp_path / "c.parquet")
    ex = data.load_task("countdown", "test", tmp_path / "c.parquet")
    assert [e["target"] for e in ex] == [([1, 2, 3], 6), ([4, 5, 6], 15)]
    assert all(type(n) is int for n in ex[0]["target"][0])


def test_countdown_d1_format_and_json_round_trip(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"input": "30,100,93", "output": "23"}])
    ex = data.load_task("countdown", "test", f)[0]
    assert ex["target"] == ([30, 100, 93], 23)
    assert "Using only the numbers [30, 100, 93], create an arithmetic expression that evaluates to exactly 23." in ex["prompt"]
    back = json.loads(json.dumps(ex))
    assert back["target"] == [[30, 100, 93], 23]
    assert data.restore_target("countdown", back["target"]) == ex["target"]
    assert data.restore_target("sudoku", ["1" * 16, "2" * 16]) == ("1" * 16, "2" * 16)


def test_countdown_train_filter_and_test_dedup(tmp_path, capsys):
    test_rows = [{"input": "1,2,3", "output": "6"}, {"input": "10,20,30", "output": "60"}]
    test_file = write_jsonl(tmp_path / "test.jsonl", test_rows)
    rows = [{"nums": [i, i + 1, i + 2], "target": i + 40} for i in range(40, 140)]  # no overlap with the test
    rows += [{"nums": [3, 2, 1], "target": 6}, {"nums": [30, 10, 20], "target": 60},  # overlaps (as multisets)
             {"nums": [1, 2, 3], "target": 7}]  # same numbers, other target: kept
    rows += [{"nums": [1, 2, 3, 4], "target": 10}] * 4  # 4 numbers: filtered like d1
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    train = data.load_task("countdown", "train", f, test_path=test_file)
    out = capsys.readouterr().out
    assert "kept 103 of 107" in out and "4 filtered out" in out
    val = data.load_task("countdown", "val", f, test_path=test_file)
    out += capsys.readouterr().out
    removed = [int(n) for n in re.findall(r"removed (\d+) of \d+ items that equal a test item", out)]
    assert len(removed) == 2 and sum(removed) == 2 and len(train) + len(val) == 103 - 2
    test_keys = {data.countdown_key([1, 2, 3], 6), data.countdown_key([10, 20, 30], 60)}
    kept = {data.countdown_key(*e["target"]) for e in train + val}
    assert not kept & test_keys and data.countdown_key([1, 2, 3], 7) in kept
    assert all(len(e["target"][0]) == 3 for e in train + val)


def test_sudoku_csv_and_d1_subset(tmp_path):
    puzzles = data.generate_sudoku(500, blanks=8, seed=3)
    f = write_csv(tmp_path / "sudoku.csv", [{"Puzzle": p["target"][0], "Solution": p["target"][1]} for p in puzzles])
    test = data.load_task("sudoku", "test", f, style="compact")
    idx = data.sudoku_test_indices()
    assert [e["id"] for e in test] == [f"sudoku/test/{i}" for i in idx]
    assert [e["target"] for e in test] == [puzzles[i]["target"] for i in idx]
    assert test[0]["prompt"] == puzzles[idx[0]]["target"][0]  # leading zeros survive CSV
    # lowercase column names in JSONL work too
    g = write_jsonl(tmp_path / "s.jsonl", [{"puzzle": "3102200002100320", "solution": "3142243142131324"}])
    assert data.load_task("sudoku", "test", g)[0]["target"] == ("3102200002100320", "3142243142131324")


def test_sudoku_subset_equals_numpy_global_seed():
    state = np.random.get_state()
    try:
        np.random.seed(42)
        expected = np.random.choice(500, 256, replace=False).tolist()
    finally:
        np.random.set_state(state)
    assert data.sudoku_test_indices() == expected and len(set(expected)) == 256


@pytest.mark.skipif(not (SHARED / "4x4_test_sudoku.csv").exists(), reason="d1 test files not present")
def test_d1_test_files():
    sudoku = data.load_task("sudoku", "test", SHARED / "4x4_test_sudoku.csv")
    assert len(sudoku) == 256 and all(e["target"][0].count("0") == 8 for e in sudoku)
    countdown = data.load_task("countdown", "test", SHARED / "countdown_cd3_test.jsonl")
    assert len(countdown) == 256 and countdown[0]["target"] == ([30, 100, 93], 23)


@pytest.mark.parametrize("task,row,field", [
    ("gsm8k", {"question": "q"}, "answer"),
    ("math", {"solution": "s"}, "problem"),
    ("countdown", {"nums": [1, 2, 3]}, "target"),
    ("countdown", {"nums": [1, 2.5, 3], "target": 4}, "nums"),
    ("countdown", {"nums": "1,x,3", "target": 4}, "nums"),
    ("countdown", {"nums": [1, 2, 3], "target": "six"}, "target"),
    ("sudoku", {"Puzzle": "31022000021003", "Solution": "3142243142131324"}, "puzzle"),
    ("sudoku", {"Puzzle": "3102200002100329", "Solution": "3142243142131324"}, "puzzle"),
    ("sudoku", {"Puzzle": "3102200002100320", "Solution": "3142243142131342"}, "solution"),
    ("sudoku", {"Puzzle": "3102200002100320"}, "solution"),
])
def test_malformed_rows_name_file_row_field(tmp_path, task, row, field):
    good = {"gsm8k": {"question": "q", "answer": "#### 1"}, "math": {"problem": "p", "solution": "s"},
            "countdown": {"nums": [1, 2, 3], "target": 6},
            "sudoku": {"Puzzle": "3102200002100320", "Solution": "3142243142131324"}}[task]
    f = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(ValueError) as e:
        data.load_task(task, "test", f)
    msg = str(e.value)
    assert str(f) in msg and "row 3" in msg and repr(field) in msg, msg


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load_task("gsm8k", "test", tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match="row 2"):
        data.read_rows(bad)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="extension"):
        data.read_rows(tmp_path / "x.txt")
    (tmp_path / "d.json").write_text('{\n  "a": 1\n}\n')  # one pretty-printed object: neither a list nor JSON Lines
    with pytest.raises(ValueError, match="list"):
        data.read_rows(tmp_path / "d.json")


def test_load_tasks_mix(tmp_path):
    g = write_jsonl(tmp_path / "g.jsonl", gsm8k_rows(3))
    c = write_jsonl(tmp_path / "c.jsonl", [{"input": "1,2,3", "output": "6"}])
    mix = data.load_tasks("gsm8k, countdown", "test", f"{g},{c}")
    assert [e["task"] for e in mix] == ["gsm8k"] * 3 + ["countdown"]
    with pytest.raises(ValueError, match="paths"):
        data.load_tasks("gsm8k,countdown", "test", str(g))


# ----------------------------------------------------------------------------- downloads

def test_d1_file_download_and_offline_error(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "f.jsonl").write_text('{"input": "1,2,3", "output": "6"}\n')
    cache = tmp_path / "cache"
    got = data.d1_file("f.jsonl", cache, base_url=remote.as_uri() + "/")
    assert got == cache / "f.jsonl" and got.read_text() == (remote / "f.jsonl").read_text()
    assert list(cache.iterdir()) == [got]  # no temporary file left
    with pytest.raises(RuntimeError, match="local path"):
        data.d1_file("missing.jsonl", cache, base_url=remote.as_uri() + "/")
    assert list(cache.iterdir()) == [got]


def test_hub_error_says_to_pass_path(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="path="):
        data.load_task("gsm8k", "test")


# ----------------------------------------------------------------------------- generators

def test_all_grids_and_solver():
    grids = data.all_sudoku_grids()
    assert len(grids) == len(set(grids)) == 288
    assert all(data.count_solutions(g) == 1 for g in grids[:20])
    assert data.count_solutions("0" * 16, limit=1000) == 288
    assert data.count_solutions("1100" + "0" * 12) == 0  # clashing givens


def test_generate_sudoku_unique_and_deterministic():
    ex = data.generate_sudoku(60, blanks=(4, 12), seed=5)
    for e in ex:
        puzzle, solution = e["target"]
        assert data.count_solutions(puzzle) == 1 and solution in data.all_sudoku_grids()
        assert all(p in ("0", s) for p, s in zip(puzzle, solution)) and 4 <= puzzle.count("0") <= 12
    assert [e["target"] for e in ex] == [e["target"] for e in data.generate_sudoku(60, blanks=(4, 12), seed=5)]
    assert [e["target"] for e in ex] != [e["target"] for e in data.generate_sudoku(60, blanks=(4, 12), seed=6)]
    assert all(e["target"][0].count("0") == 8 for e in data.generate_sudoku(10, blanks=8, seed=0))
    with pytest.raises(ValueError):
        data.generate_sudoku(1, blanks=13)


def test_synthetic_sudoku_disjoint_grids():
    split = {s: data.synthetic_task("sudoku", s, 100, seed=1) for s in data.SPLITS}
    grids = {s: {e["target"][1] for e in ex} for s, ex in split.items()}
    assert not grids["train"] & grids["test"] and not grids["train"] & grids["val"] and not grids["val"] & grids["test"]
    assert split["test"] == data.synthetic_task("sudoku", "test", 100, seed=1)
    assert split["test"][0]["id"] == "sudoku/synthetic-test-s1/0"


def test_generate_countdown_solutions_evaluate_to_target():
    ex = data.generate_countdown(300, seed=2)
    for e in ex:
        nums, target = e["target"]
        assert len(nums) == 3 and 1 <= target <= 100
        assert safe_eval(e["solution"]) == target and numbers_in(e["solution"]) == sorted(nums)
    assert ex == data.generate_countdown(300, seed=2)
    assert len({data.countdown_key(*e["target"]) for e in ex}) == 300


def test_synthetic_countdown_disjoint_and_deterministic():
    split = {s: data.synthetic_task("countdown", s, 200, seed=0) for s in data.SPLITS}
    keys = {s: {data.countdown_key(*e["target"]) for e in ex} for s, ex in split.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    assert split["train"] == data.synthetic_task("countdown", "train", 200, seed=0)
    with pytest.raises(ValueError):
        data.synthetic_task("gsm8k", "train", 1)


# ----------------------------------------------------------------------------- SFT

def test_s1k_and_sft_file(tmp_path):
    rows = [{"question": "What?", "thinking_trajectories": ["think", "other"], "attempt": "42"}]
    s1k = data.load_s1k(write_jsonl(tmp_path / "s1k.jsonl", rows))
    assert s1k[0]["prompt"] == data.SFT_SYSTEM + "\n\nWhat?"
    assert s1k[0]["answer"] == "<reasoning>think</reasoning>\n<answer>42</answer>"
    with pytest.raises(ValueError, match="row 1.*'attempt'"):
        data.load_s1k(write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "thinking_trajectories": ["t"]}]))
    sft = data.load_sft_file(write_jsonl(tmp_path / "mine.jsonl", [{"prompt": "p", "answer": "a"}]))
    assert sft == [{"id": "sft/mine/0", "prompt": "p", "answer": "a"}]
    with pytest.raises(ValueError, match="row 1.*'answer'"):
        data.load_sft_file(write_jsonl(tmp_path / "m2.jsonl", [{"prompt": "p"}]))


def test_math_test_target_is_the_answer_field(tmp_path):
    """MATH-500 rows carry both: the test target is `answer` (what d1 scored against), training keeps the
    solution (the reward takes its last box)."""
    rows = [{"problem": "Simplify 2/4.", "solution": "Halve: $\\boxed{\\frac{2}{4}} = \\frac12$", "answer": "\\frac{1}{2}"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 20))
    assert data.load_task("math", "test", tmp_path / "m.jsonl")[0]["target"] == "\\frac{1}{2}"
    assert data.load_task("math", "train", tmp_path / "m.jsonl")[0]["target"].startswith("Halve")
