"""The coding task: known good and wrong solutions of HumanEval-, MBPP- and KodCode-style problems scored through
rewards.py (each verdict runs the program in sandbox.py), local-file and hub loading with row validation in data.py,
JSON round trips of targets, and `eval.py --task humaneval,mbpp` end to end on the tiny model."""
import json

import pytest

import data
import eval as ev
import rewards as R
import sandbox


def answer(code: str, reasoning: str = "I go through the cases one by one.") -> str:
    """A realistic, well-formatted model output."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n```python\n{code.strip()}\n```\n</answer>"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- three HumanEval-style problems
# (prompt, canonical solution, wrong solution, test, entry point), in HumanEval's format

HUMANEVAL = [
    ('from typing import List\n\n\ndef below_threshold(l: List[int], t: int) -> bool:\n    """Return True if all '
     'numbers in the list l are below threshold t.\n    >>> below_threshold([1, 2, 4, 10], 100)\n    True\n    '
     '>>> below_threshold([1, 20, 4, 10], 5)\n    False\n    """\n',
     "    return all(x < t for x in l)\n",
     "    return all(x <= t for x in l)\n",
     "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2, 4, 10], 100)\n"
     "    assert not candidate([1, 20, 4, 10], 5)\n    assert candidate([], 0)\n    assert not candidate([1, 8, 4], 8)\n",
     "below_threshold"),
    ('\ndef flip_case(string: str) -> str:\n    """ For a given string, flip lowercase characters to uppercase and '
     "uppercase to lowercase.\n    >>> flip_case('Hello')\n    'hELLO'\n    \"\"\"\n",
     "    return string.swapcase()\n",
     "    return string.upper()\n",
     "\n\nMETADATA = {'author': 'jt'}\n\n\ndef check(candidate):\n    assert candidate('') == ''\n"
     "    assert candidate('Hello!') == 'hELLO!'\n    assert candidate('These violent delights') == 'tHESE VIOLENT DELIGHTS'\n",
     "flip_case"),
    ('\n\ndef fib(n: int):\n    """Return n-th Fibonacci number.\n    >>> fib(10)\n    55\n    >>> fib(1)\n    1\n'
     '    """\n',
     "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     "    a, b = 1, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(10) == 55\n    assert candidate(1) == 1\n"
     "    assert candidate(8) == 21\n    assert candidate(12) == 144\n",
     "fib"),
]
HUMANEVAL_ROWS = [{"task_id": f"HumanEval/{i}", "prompt": p, "canonical_solution": good, "test": test,
                   "entry_point": entry} for i, (p, good, _, test, entry) in enumerate(HUMANEVAL)]

# MBPP, sanitized config: the second item needs its test_imports
MBPP_ROWS = [
    {"task_id": 2, "prompt": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n", "test_imports": [],
     "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                   "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
                   "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))"]},
    {"task_id": 139, "prompt": "Write a function to find the circumference of a circle.",
     "code": "import math\ndef circle_circumference(r):\n    return 2 * math.pi * r\n", "test_imports": ["import math"],
     "test_list": ["assert math.isclose(circle_circumference(10), 62.83185307179586, rel_tol=0.001)",
                   "assert math.isclose(circle_circumference(5), 31.41592653589793, rel_tol=0.001)"]},
]

KODCODE_TEST = """from solution import second_largest
import pytest

def test_basic():
    assert second_largest([1, 3, 2]) == 2

def test_duplicates():
    assert second_largest([5, 5, 4]) == 4

def test_none():
    assert second_largest([7, 7]) is None

def test_bad_input():
    with pytest.raises(TypeError):
        second_largest(None)
"""
KODCODE_GOOD = "def second_largest(nums):\n    top = sorted(set(nums), reverse=True)\n    return top[1] if len(top) > 1 else None\n"
KODCODE_WRONG = "def second_largest(nums):\n    top = sorted(nums, reverse=True)\n    return top[1] if len(top) > 1 else None\n"


def kodcode_row(i: int, test: str = KODCODE_TEST) -> dict:
    return {"question_id": f"Kod_{i}", "question": f"({i}) Return the second largest distinct number of a list, "
            "or None when there is none.", "solution": KODCODE_GOOD, "test": test,
            "test_info": [{"function_name": "second_largest", "parameter_list": "(nums)",
                           "function_declaration": "def second_largest(nums):", "docstring": "..."}]}


@pytest.fixture(autouse=True)
def sandbox_runs(monkeypatch):
    """Verdicts run in the isolated sandbox where this machine has bwrap, else in the rlimit fallback (as root the
    default would refuse to run without bwrap; tests/test_sandbox.py skips its isolation tests then, saying why),
    with a generous timeout: these tests check verdicts, not the 5 s limit, which a loaded machine can reach with
    any program. Returns the list of every run's Result."""
    monkeypatch.setenv("D1_SANDBOX", "bwrap" if sandbox.bwrap_problem() is None else "rlimit")
    runs, real_run = [], sandbox._run

    def run_with_a_generous_timeout(*args, **kwargs):
        runs.append(real_run(*args, **{**kwargs, "timeout": 30}))
        return runs[-1]

    monkeypatch.setattr(sandbox, "_run", run_with_a_generous_timeout)
    return runs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("code")
    return write_jsonl(d / "h.jsonl", HUMANEVAL_ROWS), write_jsonl(d / "m.jsonl", MBPP_ROWS)


# ----------------------------------------------------------------------------- verdicts and rewards


def test_humaneval_known_solutions(files):
    examples = data.load_task("humaneval", "test", files[0])
    assert len(examples) == 3
    for ex, (prompt, good, wrong, _, entry) in zip(examples, HUMANEVAL):
        assert ex["target"]["tests"][0].rstrip().endswith(f"check({entry})")  # the harness: one test
        assert R.eval_score("humaneval", answer(prompt + good), ex["target"]) == 1.0, entry
        assert R.eval_score("humaneval", answer(prompt + wrong), ex["target"]) == 0.0, entry
        assert R.parsed_answer("humaneval", answer(prompt + good)) == (prompt + good).strip() + "\n"
    # no code block, a broken program, and exiting with status 0 before the tests all fail
    target = examples[2]["target"]
    for bad in ("<reasoning>\nfib\n</reasoning>\n<answer>\n55\n</answer>", answer("def fib(n) return 1"),
                answer("import sys\nsys.exit(0)")):
        assert R.eval_score("humaneval", bad, target) == 0.0


def test_mbpp_known_solutions_and_partial_reward(files):
    first, second = data.load_task("mbpp", "test", files[1])
    assert second["target"]["tests"][0] == "import math\n" + MBPP_ROWS[1]["test_list"][0]  # test_imports prepended
    for ex, row in ((first, MBPP_ROWS[0]), (second, MBPP_ROWS[1])):
        assert R.eval_score("mbpp", answer(row["code"]), ex["target"]) == 1.0
        assert R.reward("code", answer(row["code"]), ex["target"]) == {"correctness": 1.0, "format": 0.1, "total": 1.1}
    # passes the first two asserts only: a third of the training reward is lost, and pass@1 is 0
    partial = "def similar_elements(a, b):\n    return tuple(x for x in set(a) & set(b) if x < 13)\n"
    r = R.reward("code", answer(partial), first["target"])
    assert r["correctness"] == pytest.approx(2 / 3) and r["format"] == 0.1
    assert R.eval_score("mbpp", answer(partial), first["target"]) == 0.0
    # the same code outside <answer>: full correctness, no format bonus
    loose = f"Here you go:\n```python\n{MBPP_ROWS[0]['code']}```"
    assert R.reward("mbpp", loose, first["target"]) == {"correctness": 1.0, "format": 0.0, "total": 1.0}


def test_kodcode_known_solutions(tmp_path):
    f = write_jsonl(tmp_path / "k.jsonl", [kodcode_row(0)])
    (ex,) = data.load_task("code", "train", f)  # 1 item: val is empty, train keeps it
    assert ex["target"] == {"tests": [KODCODE_TEST]}
    assert R.reward("code", answer(KODCODE_GOOD), ex["target"]) == {"correctness": 1.0, "format": 0.1, "total": 1.1}
    assert R.reward("code", answer(KODCODE_WRONG), ex["target"]) == {"correctness": 0.0, "format": 0.1, "total": 0.1}
    assert R.eval_score("code", answer(KODCODE_GOOD), ex["target"]) == 1.0  # validation verdict during RL
    assert R.eval_score("code", answer(KODCODE_WRONG), ex["target"]) == 0.0


def test_score_batch_in_parallel_keeps_order():
    target = {"tests": [KODCODE_TEST]}
    completions = [answer(KODCODE_GOOD), answer(KODCODE_WRONG), "no code at all", f"```python\n{KODCODE_GOOD}```",
                   answer(KODCODE_GOOD)]
    out = R.score("code", completions, [target] * len(completions), workers=2)
    assert set(out) == {"correctness", "format", "total"}
    assert out["total"] == pytest.approx([1.1, 0.1, 0.0, 1.0, 1.1])
    assert R.eval_scores("code", completions, [target] * 5, workers=3) == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert R.score("mbpp", [], []) == {"correctness": [], "format": [], "total": []}
    with pytest.raises(ValueError):
        R.score("code", ["x"], [])


def test_batch_with_an_attacker_scores_the_others_in_full():
    # One completion of a GRPO group kills every process it can reach while the group is scored in parallel:
    # the others keep their full reward (the rlimit fallback's shared uid lets it kill them: bwrap only).
    if (problem := sandbox.bwrap_problem()) is not None:
        pytest.skip(f"bwrap cannot run here, so sandboxes are not isolated from each other: {problem}")
    attacker = ("import os, time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n"
                "    for pid in [-1, *range(1, 400)]:\n        try:\n            os.kill(pid, 9)\n"
                "        except OSError:\n            pass\n")
    slow_good = "import time\n" + KODCODE_GOOD.replace("    top =", "    time.sleep(0.3)\n    top =")
    completions = [answer(attacker)] + [answer(slow_good)] * 3
    out = R.score("code", completions, [{"tests": [KODCODE_TEST]}] * 4, workers=4)
    assert out["total"] == pytest.approx([0.1, 1.1, 1.1, 1.1])


def test_odd_completions_never_raise_or_hang(sandbox_runs):
    target = {"tests": ["assert f(1) == 2"]}
    big = 100_000
    for text in ["", "```", "```python\n", "<answer>```python\n```</answer>", "```python\n\udcff\n```",
                 "<answer>" * (big // 8), "```" + " " * big + "x", "<answer>\n```python\n" + "x = 1\n" * 20_000 + "```",
                 answer("def f(x):\n    return x + 1") + "\x00" * 10]:
        for task in R.CODE_TASKS:
            r = R.reward(task, text, target)
            assert 0.0 <= r["correctness"] <= 1.0 and r["format"] in (0.0, sandbox.FORMAT_BONUS)
            assert R.eval_score(task, text, target) in (0.0, 1.0)
            assert isinstance(R.parsed_answer(task, text), str)
    assert sandbox_runs and not any(run.timed_out for run in sandbox_runs)  # each ended on its own: none hung
    assert R.reward("code", "<answer>" * (big // 8), target)["total"] == 0.0  # no complete <answer> and no fence: nothing to run
    with pytest.raises(ValueError, match="tests"):
        R.reward("code", "x", ["assert True"])  # a malformed target is the caller's bug
    with pytest.raises(ValueError, match="tests"):
        R.eval_score("humaneval", "x", {"tests": []})  # would accept any program


def test_json_round_trip_of_targets_and_rescore(files, tmp_path):
    ex = data.load_task("humaneval", "test", files[0])[0]
    back = json.loads(json.dumps(ex))["target"]
    assert back == ex["target"] and data.restore_target("humaneval", back) == ex["target"]
    good = answer(HUMANEVAL[0][0] + HUMANEVAL[0][1])
    assert R.eval_score("humaneval", good, back) == 1.0
    # generations.jsonl with stale verdicts, as an older parser would have written: --rescore fixes them
    mbpp = data.load_task("mbpp", "test", files[1])[0]
    records = [{"index": i, "id": e["id"], "task": e["task"], "gen_length": 16, "seed": 0, "prompt": "p",
                "completion": c, "parsed": "stale", "target": e["target"], "score": 0.5}
               for i, (e, c) in enumerate([(ex, good), (ex, "no code"), (mbpp, answer(MBPP_ROWS[0]["code"]))])]
    gen = write_jsonl(tmp_path / "generations.jsonl", records)
    ev.main(["--rescore", str(gen)])
    rescored = ev.read_jsonl(gen)
    assert [r["score"] for r in rescored] == [1.0, 0.0, 1.0]
    assert rescored[0]["parsed"].startswith("from typing import List") and rescored[1]["parsed"] == ""
    results = json.loads((tmp_path / "results.json").read_text())["results"]["model"]
    assert results["humaneval"]["16"]["accuracy"] == 0.5 and results["mbpp"]["16"]["accuracy"] == 1.0


# ----------------------------------------------------------------------------- loading


def test_prompts(files, tmp_path):
    he = data.load_task("humaneval", "test", files[0])[0]
    assert he["id"] == "humaneval/test/0" and he["prompt"].startswith(data.CODE_SYSTEM)
    assert "```python\n" + HUMANEVAL_ROWS[0]["prompt"].strip("\n") + "\n```" in he["prompt"]
    mb = data.load_task("mbpp", "test", files[1], style="eval")[0]
    assert mb["prompt"].endswith(MBPP_ROWS[0]["prompt"] + "\nYour code should pass this test:\n"
                                 + MBPP_ROWS[0]["test_list"][0])
    assert MBPP_ROWS[0]["test_list"][1] not in mb["prompt"]  # only the first test is shown
    kod = data.load_task("code", "train", write_jsonl(tmp_path / "k.jsonl", [kodcode_row(0)]))[0]
    assert kod["prompt"].endswith("\n\nYour code must define:\ndef second_largest(nums):")
    assert data.load_task("mbpp", "test", files[1], style="compact")[0]["prompt"].startswith("Write a function")
    assert all("<answer>\n```python\n" in e["prompt"] for e in (he, mb, kod))


def test_kodcode_parquet_splits_and_filter(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = [kodcode_row(i) for i in range(20)]
    rows += [kodcode_row(20, "import pytest\nfrom solution import f\n\n@pytest.mark.parametrize('x', [1, 2])\n"
                             "def test_f(x):\n    assert f(x)\n"),
             kodcode_row(21, "from solution import f\n\nclass TestF:\n    def test_f(self):\n        assert f(1)\n")]
    path = tmp_path / "kodcode.parquet"
    pd.DataFrame(rows).to_parquet(path)  # test_info comes back as numpy arrays of dicts
    train, val = data.load_task("code", "train", path), data.load_task("code", "val", path)
    assert "kept 20 of 22" in capsys.readouterr().out
    assert len(train) == 18 and len(val) == 2  # min(256, n // 10) held out
    ids = {e["id"] for e in train} | {e["id"] for e in val}
    assert len(ids) == 20 and ids == {f"code/train/{i}" for i in range(20)}
    assert all(e["target"] == {"tests": [KODCODE_TEST]} for e in train + val)
    assert "def second_largest(nums):" in train[0]["prompt"]
    # without test_info, the names the tests import from the solution
    row = {"question": "q", "test": "from solution import (a,\n    b as c)\n\ndef test_a():\n    assert a()\n"}
    assert data.load_task("code", "train", write_jsonl(tmp_path / "n.jsonl", [row]))[0]["prompt"].endswith(
        "Your code must define:\na\nb")


def test_mbpp_full_config_fields(tmp_path):
    row = {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character.",
           "code": "...", "test_setup_code": "import re", "challenge_test_list": [],
           "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"']}
    (ex,) = data.load_task("mbpp", "test", write_jsonl(tmp_path / "full.jsonl", [row]))
    assert ex["target"] == {"tests": ["import re\n" + t for t in row["test_list"]]}
    assert row["text"] in ex["prompt"]


def test_splits_that_do_not_exist(files, tmp_path):
    with pytest.raises(ValueError, match="humaneval and mbpp"):
        data.load_task("code", "test", write_jsonl(tmp_path / "k.jsonl", [kodcode_row(0)]))
    for task, path in (("humaneval", files[0]), ("mbpp", files[1])):
        for split in ("train", "val"):
            with pytest.raises(ValueError, match="has no"):
                data.load_task(task, split, path)


@pytest.mark.parametrize("task,row,field", [
    ("code", {"test": KODCODE_TEST}, "question"),
    ("code", {"question": "q"}, "test"),
    ("code", {"question": "q", "test": "   "}, "test"),
    ("code", {"question": "q", "test": KODCODE_TEST, "test_info": "def f(x):"}, "test_info"),
    ("humaneval", {"test": HUMANEVAL[0][3], "entry_point": "f"}, "prompt"),
    ("humaneval", {"prompt": "def f():\n", "entry_point": "f"}, "test"),
    ("humaneval", {"prompt": "def f():\n", "test": "assert True", "entry_point": "f"}, "test"),
    ("humaneval", {"prompt": "def f():\n", "test": HUMANEVAL[0][3]}, "entry_point"),
    ("humaneval", {"prompt": "def f():\n", "test": HUMANEVAL[0][3], "entry_point": "f(x)"}, "entry_point"),
    ("mbpp", {"test_list": ["assert f()"]}, "prompt"),
    ("mbpp", {"prompt": "p"}, "test_list"),
    ("mbpp", {"prompt": "p", "test_list": []}, "test_list"),
    ("mbpp", {"prompt": "p", "test_list": "assert f()"}, "test_list"),
    ("mbpp", {"prompt": "p", "test_list": ["assert f()"], "test_imports": "import math"}, "test_imports"),
])
def test_malformed_rows_name_file_row_field(tmp_path, task, row, field):
    good = {"code": kodcode_row(0), "humaneval": HUMANEVAL_ROWS[0], "mbpp": MBPP_ROWS[0]}[task]
    f = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(ValueError) as e:
        data.load_task(task, "train" if task == "code" else "test", f)
    msg = str(e.value)
    assert str(f) in msg and "row 3" in msg and repr(field) in msg, msg


def test_hub_sources(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    class Split:
        def __init__(self, rows):
            self.rows = rows

        def to_list(self):
            return self.rows

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        rows = {"KodCode/KodCode-Light-RL-10K": [kodcode_row(i) for i in range(10)],
                "openai/openai_humaneval": HUMANEVAL_ROWS, "google-research-datasets/mbpp": MBPP_ROWS}[name]
        return Split(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert len(data.load_task("code", "train")) == 9 and len(data.load_task("humaneval", "test")) == 3
    assert len(data.load_task("mbpp", "test")) == 2
    assert calls == [("KodCode/KodCode-Light-RL-10K", None, "train"), ("openai/openai_humaneval", None, "test"),
                     ("google-research-datasets/mbpp", "sanitized", "test")]


# ----------------------------------------------------------------------------- eval.py end to end


def test_eval_cli_on_tiny_model(tiny_dir, files, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    ev.main(["--model", str(tiny_dir), "--task", "humaneval,mbpp", "--data-path", f"{files[0]},{files[1]}",
             "--gen-length", "16", "--block-length", "8", "--limit", "2", "--out-dir", str(out_dir)])
    stdout = capsys.readouterr().out
    table = (out_dir / "results.md").read_text()
    for task in ("humaneval", "mbpp"):
        assert f"| {task} | 16 |" in table and f"| {task} | 16 |" in stdout
    records = ev.read_jsonl(out_dir / "generations.jsonl")
    assert [(r["task"], r["index"]) for r in records] == [("humaneval", 0), ("humaneval", 1), ("mbpp", 0), ("mbpp", 1)]
    assert all(r["score"] in (0.0, 1.0) and isinstance(r["parsed"], str) and "tests" in r["target"] for r in records)
    results = json.loads((out_dir / "results.json").read_text())["results"]
    (summary,) = results.values()
    assert summary["humaneval"]["16"]["n"] == 2 and summary["mbpp"]["16"]["n"] == 2
    # the stored completions and targets score the same after the JSON round trip
    ev.main(["--rescore", str(out_dir / "generations.jsonl")])
    assert [r["score"] for r in ev.read_jsonl(out_dir / "generations.jsonl")] == [r["score"] for r in records]
