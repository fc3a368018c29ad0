"""Task data for d1: prompts, dataset loading (hub / d1 repository files / local files), synthetic generators, SFT data.

An example is a plain dict {"task", "id", "prompt", "target"}: "prompt" is the user message (not yet templated;
`format_prompt` applies the chat template), "id" a stable string "<task>/<source split>/<row index in the source>",
and "target" follows rewards.py: gsm8k = the GSM8K answer text (with "#### n"), math = the reference solution text
(or the final answer when there is no solution), countdown = (numbers: list[int], target: int), sudoku =
(puzzle, solution) as 16-character strings, '0' = blank. Generated examples also carry "solution".

Coding tasks (CODE_TASKS): "code" trains on KodCode-Light-RL-10K (train/val only), "humaneval" (164 problems) and
"mbpp" (MBPP sanitized, 257 problems) are test sets only. Their target is {"tests": [str, ...]}: Python test code
for sandbox.py, run after the model's program (plain JSON, so it survives eval.py's generations file unchanged).
KodCode: its pytest module (`from solution import f`, `def test_x(): ...`) as ONE test; HumanEval: its `test` code
+ `check(<entry_point>)` as ONE test (the harness: all asserts in one run); MBPP: one test per assert of
`test_list`, each preceded by `test_imports` (and the full config's `test_setup_code`).

The prompt strings of d1's tasks (D1_TASKS) are d1's exact strings (public d1 code): results are only comparable
with the same prompts. d1 published no coding prompts: CODE_SYSTEM below is ours, the same for --style rl and eval.

Deliberate differences from d1:
- Validation split (d1 had none and selected checkpoints on the test set). "val" is a held-out slice of the
  TRAINING data, never the test set: the training data is shuffled with numpy's default_rng(42) permutation
  (exactly what d1's `datasets.shuffle(seed=42)` does) and val = the last min(N, n // 10) items, "train" the rest.
  Countdown and Sudoku: N = 500, i.e. val is exactly the 500 items d1 set aside and never used, so "train" is
  d1's training set. GSM8K and MATH: N = 256, i.e. these 256 problems are removed from d1's training set.
- Countdown train/val: items whose numbers (as a multiset) and target equal a test item are removed (d1 trained
  on them); the count is printed.
- Local files are validated: a malformed row raises (file, row, field) instead of being skipped; anything that
  is filtered on purpose (Countdown items without 3 numbers, as d1) is counted and printed.
- GSM8K answers without "####" (e.g. a bare number in a local file) become "#### <answer>".
- Synthetic Sudoku/Countdown generators (unique-solution puzzles, guaranteed-solvable Countdown) for tiny CPU runs.
- KodCode train/val: items whose test module sandbox.py cannot run as written are dropped and counted (it calls the
  top-level `def test_*()` functions without arguments: parametrized/fixture tests would fail every solution, and
  test classes would never run, passing every program). See `sandbox_gradable`.

Longer than ~650 lines, on purpose: seven tasks' prompts, row parsers and sources, the file formats users have,
and two generators; each task's pieces are short and adjacent, and a second data file would split them.
"""
from __future__ import annotations

import csv
import functools
import gzip
import json
import os
import random
import re
import tempfile
import urllib.request
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

D1_TASKS = ("gsm8k", "math", "countdown", "sudoku")  # d1's reasoning tasks, with d1's exact prompts
CODE_TASKS = ("code", "humaneval", "mbpp")  # KodCode training (+ val); HumanEval and MBPP evaluation
TASKS = D1_TASKS + CODE_TASKS
SPLITS = ("train", "val", "test")
STYLES = ("rl", "eval", "compact")

# -----------------------------------------------------------------------------
# Prompts (d1's exact strings; see ../shared/data/d1_prompts.json)

RL_FORMAT = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
SUDOKU_SYSTEM = (
    "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading "
    "left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n- Fill empty cells with digits 1-4\n"
    "- Each row must contain digits 1-4 exactly once\n- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\nImportant: Your solution must be a COMPLETE "
    "16-character string with only the digits 1-4, representing your final solved grid.\n\nRespond in this exact "
    "format:\n<reasoning>\nYour step-by-step solving process\n</reasoning>\n<answer>\n"
    "[16-character solution string with no spaces or separators]\n</answer>\n")
RL_MATH_INTRO = ("\n\nYou are a math expert. You will be given a question to solve. Solve it step by step. "
                 "Wrap the final answer in a \\boxed{}. \n\n")
RL_COUNTDOWN = (
    "\nUsing only the numbers {nums}, create an arithmetic expression that evaluates to exactly {target}. You must "
    "use all numbers from the list, and each number must be used exactly once. You may use the operations +, -, *, "
    "and / as needed. After reasoning, provide only your final expression inside <answer></answer> tags without "
    "including an equals sign or the target number. For example, if the numbers are [2, 3, 4] and the target is 5, "
    "a valid answer is: <answer>\n2*4-3\n</answer>")
_EVAL_FORMAT = "Respond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
_MATH_EXPERT = ("You are a math expert. You will be given a question to solve. Solve it step by step. "
                "Wrap the final answer in a \\boxed{}.")
EVAL_SYSTEM = {  # GSM8K and MATH differ on purpose: d1's strings (a space after "{}." vs a stray '" ' at the end)
    "gsm8k": _MATH_EXPERT + " \n" + _EVAL_FORMAT,
    "math": _MATH_EXPERT + "\n" + _EVAL_FORMAT + "\" \n",
    "countdown": (
        "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided "
        "target number. You may use the operations +, -, *, and / as needed, but each number must be used exactly "
        "once. Think step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags "
        "without including an equals sign or the target number. For example: \\boxed{a + b * c}" + _EVAL_FORMAT),
    "sudoku": SUDOKU_SYSTEM,
}
EVAL_PREFILL = "<reasoning>"
SFT_SYSTEM = "\nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n...\n</answer>\n"
# Coding prompt (ours: d1 published none). One fenced block inside <answer>: sandbox.extract_code takes the last
# block of the last <answer> that has one, and code_reward's format bonus needs the block inside <answer>.
CODE_SYSTEM = (
    "You are an expert Python programmer. Solve the programming problem below. Think it through step by step inside "
    "<reasoning> tags, then give your final solution inside <answer> tags as ONE fenced Python code block: complete, "
    "self-contained code (with the imports it needs) that defines the requested function with exactly the given name "
    "and signature. Do not include tests, example usage or code that reads input.\n"
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n```python\n...\n```\n</answer>\n")


def _nums(f: dict) -> list[int]:
    return [int(n) for n in f["nums"]]  # plain ints: the Python list repr is part of the prompt ("[30, 100, 93]")


def _question(task: str, f: dict, style: str) -> str:
    if task == "code":  # KodCode questions rarely name the function; the tests import it by name
        sigs = f.get("signatures") or []
        return f["question"].strip() + ("\n\nYour code must define:\n" + "\n".join(sigs) if sigs else "")
    if task == "humaneval":  # the signature + docstring prompt, to be completed as a whole function
        return ("Complete the following Python function. Write the whole function, with the imports above it, in "
                "your code block:\n```python\n" + f["prompt"].strip("\n") + "\n```")
    if task == "mbpp":  # the usual MBPP prompt shows a test: it fixes the function's name and signature
        return f["text"].strip() + "\nYour code should pass this test:\n" + f["example_test"].strip()
    if task == "gsm8k":
        return f["question"]
    if task == "math":
        return f["problem"]
    if task == "countdown":
        return f"Numbers: {_nums(f)}\nTarget: {int(f['target'])}"
    return f["puzzle"] if style == "compact" else f"Solve the following Sudoku puzzle: {f['puzzle']}\n"


def user_message(task: str, fields: dict, style: str = "rl") -> str:
    """The user message of one example. fields: gsm8k {question}, math {problem}, countdown {nums, target},
    sudoku {puzzle}, code {question, signatures (list of str, may be empty)}, humaneval {prompt}, mbpp {text,
    example_test}. style: "rl" (d1 training prompts), "eval" (d1 evaluation prompts) or "compact" (the bare
    question, for tiny character-level models). Coding tasks have one prompt for rl and eval: CODE_SYSTEM."""
    _check(task, TASKS, "task")
    _check(style, STYLES, "style")
    if style == "compact":
        return _question(task, fields, style)
    if task in CODE_TASKS:
        return CODE_SYSTEM + "\n" + _question(task, fields, style)
    if style == "eval":
        return EVAL_SYSTEM[task] + "\n\n" + _question(task, fields, style)
    if task == "gsm8k":
        return RL_FORMAT + "\n\n" + fields["question"]
    if task == "math":
        return RL_FORMAT + RL_MATH_INTRO + fields["problem"]
    if task == "countdown":
        return RL_FORMAT + RL_COUNTDOWN.format(nums=_nums(fields), target=int(fields["target"]))
    return SUDOKU_SYSTEM + "\n\n" + _question(task, fields, style)


def sft_user_message(question: str) -> str:
    """d1's SFT user message: SFT system text + blank line + question."""
    return SFT_SYSTEM + "\n\n" + question


def sft_answer(thinking: str, attempt: str) -> str:
    """d1's SFT answer format (no newlines inside the tags)."""
    return f"<reasoning>{thinking}</reasoning>\n<answer>{attempt}</answer>"


def format_prompt(tokenizer, user_text: str, prefill: str = "") -> str:
    """Chat template applied to one user message (LLaDA's template ends with the assistant header) + prefill."""
    messages = [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill


def _check(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")


def _log(msg: str):
    # print, not logging: scripts here do not configure logging, and these counts must be seen
    print(f"data: {msg}", flush=True)


# -----------------------------------------------------------------------------
# Reading rows: d1 repository files, the hub, local files

D1_RAW_URL = "https://raw.githubusercontent.com/dllm-reasoning/d1/main/dataset/"
# where each (task, source split) comes from when no path is given: ("hub", name, config, split) or ("d1", file)
SOURCES = {
    ("gsm8k", "train"): ("hub", "openai/gsm8k", "main", "train"),
    ("gsm8k", "test"): ("hub", "openai/gsm8k", "main", "test"),
    ("math", "train"): ("hub", "ankner/math-500", None, "train"),
    ("math", "test"): ("hub", "HuggingFaceH4/MATH-500", None, "test"),
    ("countdown", "train"): ("hub", "Jiayi-Pan/Countdown-Tasks-3to4", None, "train"),
    ("countdown", "test"): ("d1", "countdown_cd3_test.jsonl"),
    ("sudoku", "train"): ("d1", "4x4_sudoku_unique_puzzles.csv"),
    ("sudoku", "test"): ("d1", "4x4_test_sudoku.csv"),
    ("code", "train"): ("hub", "KodCode/KodCode-Light-RL-10K", None, "train"),  # 10,000 items, no test split
    ("humaneval", "test"): ("hub", "openai/openai_humaneval", None, "test"),  # 164 items
    ("mbpp", "test"): ("hub", "google-research-datasets/mbpp", "sanitized", "test"),  # 257 items
}
HOLDOUT = {"gsm8k": 256, "math": 256, "countdown": 500, "sudoku": 500, "code": 256}  # val size cap (module docstring)
SHUFFLE_SEED = 42


def d1_file(name: str, cache_dir: str | os.PathLike | None = None, base_url: str = D1_RAW_URL) -> Path:
    """A file of d1's `dataset/` folder, downloaded once into cache_dir (default ~/.cache/d1, or $D1_CACHE)."""
    cache = Path(cache_dir or os.environ.get("D1_CACHE") or Path.home() / ".cache" / "d1").expanduser()
    dest = cache / name
    if dest.exists():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    url = base_url + name
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            out.write(resp.read())
        os.replace(tmp, dest)  # atomic: a crash never leaves a truncated file under the final name
    except OSError as e:  # URLError, timeouts, disk errors
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeError(f"could not download {url} ({e}). Offline? Download it elsewhere and save it as {dest}, "
                           "or pass a local path instead (path=..., or test_path=... for the Countdown test file)") from e
    return dest


def _hub_rows(name: str, config: str | None, split: str) -> list[dict]:
    try:
        import datasets  # lazy: importing datasets is slow and only needed here
    except ImportError as e:
        raise ImportError(f"loading {name} from the hub needs `datasets` (pip install datasets), "
                          "or pass a local file with path=...") from e
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except OSError as e:  # offline, unknown/gated dataset, HTTP: all OSErrors; one line, not the hub's chained ones
        raise RuntimeError(f"could not load {name} ({config or 'default'}, {split}) from the hub: {e}. "
                           "Offline? Save the split as JSONL/CSV/Parquet elsewhere and pass path=...") from None
    return ds.to_list()


def write_sudoku_csv(path: str | os.PathLike, examples: list[dict]) -> Path:
    """Sudoku examples -> a CSV in d1's test-file format (Puzzle,Solution), which load_task(path=...) reads."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Puzzle", "Solution"])
        w.writerows(ex["target"] for ex in examples)
    return Path(path)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a local data file, as dicts: .jsonl; .json (a list of objects, or JSON Lines as datasets'
    `Dataset.to_json` writes them); .csv; .parquet; the text formats gzip-compressed (.jsonl.gz, e.g. HumanEval's
    release file); or a folder written by datasets' `save_to_disk`. Errors name the file and the row (1-based)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir():
        rows = _read_saved_dataset(path)
    else:
        gz = path.suffix.lower() == ".gz"
        ext = Path(path.stem).suffix.lower() if gz else path.suffix.lower()
        if ext == ".parquet" and not gz:
            rows = _read_parquet(path)
        elif ext in (".jsonl", ".json", ".csv"):
            newline = "" if ext == ".csv" else None  # the csv module handles line ends inside quoted cells itself
            with (gzip.open(path, "rt", encoding="utf-8", newline=newline) if gz
                  else open(path, encoding="utf-8", newline=newline)) as f:
                # CSV: all values stay strings, so Sudoku's leading zeros survive
                rows = list(csv.DictReader(f)) if ext == ".csv" else _json_rows(f.read(), path, ext)
        else:
            raise ValueError(f"{path}: unsupported extension {''.join(path.suffixes[-2:]) if gz else ext!r} (use "
                             ".jsonl, .json, .csv or .parquet; .jsonl.gz, .json.gz, .csv.gz; or a folder written by "
                             "datasets' save_to_disk)")
    if not rows:  # else every caller fails later with a misleading message (or, worse, succeeds on nothing)
        raise ValueError(f"{path}: the file has no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i + 1}: expected an object, got {type(row).__name__}")
    return rows


def _json_rows(text: str, path: Path, ext: str) -> list:
    """A JSON array of objects, or JSON Lines (one object per line: .jsonl, and datasets' to_json under .json)."""
    if ext == ".json" and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
    rows = []
    for line in text.split("\n"):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                hint = " (a .json file must hold a list of objects, or one object per line)" if ext == ".json" else ""
                raise ValueError(f"{path}: row {len(rows) + 1}: invalid JSON ({e}){hint}") from None
    return rows


def _read_saved_dataset(path: Path) -> list[dict]:
    """The rows of a folder written by datasets' save_to_disk: a Dataset, or a DatasetDict with one split."""
    if (path / "dataset_dict.json").is_file():  # a DatasetDict: one sub-folder per split
        with open(path / "dataset_dict.json", encoding="utf-8") as f:
            splits = json.load(f).get("splits", [])
        if len(splits) != 1:
            raise ValueError(f"{path} holds a DatasetDict with splits {splits}: pass one split's folder, e.g. "
                             f"{path / splits[0] if splits else path}")
        _log(f"{path}: a DatasetDict with one split, {splits[0]!r}: reading it")
        path = path / splits[0]
    if not (path / "state.json").is_file():
        raise ValueError(f"{path} is a folder, not a data file, and not one written by datasets' save_to_disk (no "
                         "state.json): pass a .jsonl/.json/.csv/.parquet file or a save_to_disk folder")
    try:
        import datasets  # lazy: slow to import, needed only here
    except ImportError:
        raise ImportError(f"reading {path} (a datasets save_to_disk folder) needs `datasets` (pip install datasets); "
                          "or export it with Dataset.to_json / to_parquet and pass that file") from None
    return datasets.load_from_disk(str(path)).to_list()


def _read_parquet(path: Path) -> list[dict]:
    try:  # both come with `datasets`
        import pandas as pd
        import pyarrow  # noqa: F401  (pandas' parquet engine)
    except ImportError as e:
        raise ImportError(f"reading {path} needs {e.name} (pip install pandas pyarrow)") from e
    return pd.read_parquet(path).to_dict("records")  # list cells arrive as numpy arrays: the parsers accept them


def _raw_rows(task: str, source_split: str, path) -> tuple[list[dict], str]:
    if path is not None:
        return read_rows(path), str(path)
    src = SOURCES[(task, source_split)]
    if src[0] == "d1":
        file = d1_file(src[1])
        return read_rows(file), str(file)
    return _hub_rows(*src[1:]), f"{src[1]}:{src[3]}"


# -----------------------------------------------------------------------------
# Row parsing and validation: each parser returns (prompt fields, target) or raises naming file/row/field


def _field(row: dict, names: tuple, src: str, i: int):
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise ValueError(f"{src}: row {i + 1}: missing field {names[0]!r}" + (f" (or {names[1:]})" if names[1:] else ""))


def _text(row, names, src, i) -> str:
    v = _field(row, names, src, i)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{src}: row {i + 1}: field {names[0]!r} must be a non-empty string, got {v!r}")
    return v


def _as_int(v) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*[+-]?\d+\s*", v):
        return int(v)
    raise ValueError(v)


def _parse_gsm8k(row, src, i):
    q = _text(row, ("question",), src, i)
    a = _field(row, ("answer",), src, i)
    if isinstance(a, bool) or not isinstance(a, (str, int, float)) or not str(a).strip():
        raise ValueError(f"{src}: row {i + 1}: field 'answer' must be a non-empty string or a number, got {a!r}")
    a = str(a).strip()
    return {"question": q}, a if "####" in a else f"#### {a}"  # rewards read the text after "####"


def _parse_math(row, src, i):
    p = _text(row, ("problem",), src, i)
    for name in ("solution", "answer"):  # the full reference solution when present: rewards take its last \boxed{}
        v = row.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str) and v.strip():
            return {"problem": p}, v
    raise ValueError(f"{src}: row {i + 1}: missing field 'solution' (or 'answer'): a non-empty string is required")


def _parse_countdown(row, src, i):
    nums = _field(row, ("nums", "numbers", "input"), src, i)
    if isinstance(nums, str):  # d1's "30,100,93" or a CSV cell "[30, 100, 93]"
        nums = nums.strip().strip("[]").split(",")
    try:
        nums = [_as_int(v) for v in nums]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{src}: row {i + 1}: field 'nums': numbers must be integers, got {nums!r}") from e
    if not nums:
        raise ValueError(f"{src}: row {i + 1}: field 'nums' is empty")
    target = _field(row, ("target", "output"), src, i)
    try:
        target = _as_int(target)
    except ValueError as e:
        raise ValueError(f"{src}: row {i + 1}: field 'target' must be an integer, got {target!r}") from e
    return {"nums": nums, "target": target}, (nums, target)


def _parse_sudoku(row, src, i):
    puzzle = _field(row, ("puzzle", "Puzzle"), src, i)
    solution = _field(row, ("solution", "Solution"), src, i)
    if not (isinstance(puzzle, str) and re.fullmatch(r"[0-4]{16}", puzzle.strip())):
        raise ValueError(f"{src}: row {i + 1}: field 'puzzle' must be 16 digits 0-4 ('0' = blank), got {puzzle!r}")
    puzzle, solution = puzzle.strip(), str(solution).strip()
    if solution not in _grid_set():
        raise ValueError(f"{src}: row {i + 1}: field 'solution' is not a valid 4x4 Sudoku grid: {solution!r}")
    if any(p != "0" and p != s for p, s in zip(puzzle, solution)):
        raise ValueError(f"{src}: row {i + 1}: field 'solution' disagrees with the puzzle's given digits")
    return {"puzzle": puzzle}, (puzzle, solution)


def _str_list(v, field: str, src, i, allow_empty: bool = False) -> list[str]:
    if isinstance(v, np.ndarray):  # Parquet list cells
        v = v.tolist()
    if (not isinstance(v, (list, tuple)) or not (v or allow_empty)
            or not all(isinstance(s, str) and s.strip() for s in v)):
        raise ValueError(f"{src}: row {i + 1}: field {field!r} must be a {'' if allow_empty else 'non-empty '}list of "
                         f"non-empty strings, got {v!r}")
    return list(v)


_SOLUTION_IMPORT = re.compile(r"^from[ \t]+solution[ \t]+import[ \t]+(?:\(([^)]*)\)|([^\n#;]+))", re.MULTILINE)


def _parse_code(row, src, i):
    """KodCode: question + its pytest module `test`; `test_info` (optional) gives the function declarations."""
    question = _text(row, ("question",), src, i)
    test = _text(row, ("test",), src, i)
    info = row.get("test_info")
    info = info.tolist() if isinstance(info, np.ndarray) else info
    if info is not None and not (isinstance(info, (list, tuple)) and all(isinstance(t, dict) for t in info)):
        raise ValueError(f"{src}: row {i + 1}: field 'test_info' must be a list of objects, got {info!r}")
    sigs = [str(t.get("function_declaration") or t.get("function_name") or "").strip() for t in info or []]
    sigs = [s for s in sigs if s]
    if not sigs:  # no declarations: the names the tests import from the solution
        names = ",".join(a or b for a, b in _SOLUTION_IMPORT.findall(test)).split(",")
        sigs = [n.split()[0] for n in names if n.strip() and n.strip() != "*"]  # "f as g" -> "f"
    return {"question": question, "signatures": sigs}, {"tests": [test]}


def _parse_humaneval(row, src, i):
    """HumanEval: prompt (signature + docstring), test (defines check(candidate)), entry_point."""
    prompt = _text(row, ("prompt",), src, i)
    test = _text(row, ("test",), src, i)
    entry = _text(row, ("entry_point",), src, i).strip()
    if not entry.isidentifier():
        raise ValueError(f"{src}: row {i + 1}: field 'entry_point' must be a function name, got {entry!r}")
    if "def check(" not in test:
        raise ValueError(f"{src}: row {i + 1}: field 'test' must define check(candidate)")
    return {"prompt": prompt}, {"tests": [f"{test.rstrip()}\n\n\ncheck({entry})\n"]}  # the harness: one run


def _parse_mbpp(row, src, i):
    """MBPP: prompt (sanitized config; the full config calls it text), test_list, test_imports (sanitized) or
    test_setup_code (full), both optional."""
    text = _text(row, ("prompt", "text"), src, i)
    asserts = _str_list(_field(row, ("test_list",), src, i), "test_list", src, i)
    imports = row.get("test_imports")
    imports = [] if imports is None else _str_list(imports, "test_imports", src, i, allow_empty=True)
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise ValueError(f"{src}: row {i + 1}: field 'test_setup_code' must be a string, got {setup!r}")
    head = "\n".join([*imports, setup]).strip()
    tests = [f"{head}\n{a}" if head else a for a in asserts]
    return {"text": text, "example_test": asserts[0]}, {"tests": tests}


PARSERS = {"gsm8k": _parse_gsm8k, "math": _parse_math, "countdown": _parse_countdown, "sudoku": _parse_sudoku,
           "code": _parse_code, "humaneval": _parse_humaneval, "mbpp": _parse_mbpp}


_ANY_TEST_FUNCTION = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+test\w*[ \t]*\(", re.MULTILINE)  # pytest's view
_RUNNABLE_TEST_FUNCTION = re.compile(r"^def (test_\w*)\s*\(\s*\)", re.MULTILINE)  # what sandbox.py calls


def sandbox_gradable(test: str) -> bool:
    """True iff sandbox.py grades this pytest-style module as written: it has test functions and every function
    pytest would collect is a top-level `def test_*()` without parameters (the sandbox calls exactly those, with
    no arguments, ignoring decorators: a parametrized or fixture test fails every solution; a method of a test
    class or an async test never runs, so it would pass every program)."""
    return len(_ANY_TEST_FUNCTION.findall(test)) == len(_RUNNABLE_TEST_FUNCTION.findall(test)) > 0


def make_example(task: str, fields: dict, target, id: str, style: str = "rl") -> dict:
    """The example dict every script consumes."""
    return {"task": task, "id": id, "prompt": user_message(task, fields, style), "target": target}


def restore_target(task: str, target):
    """A target after a JSON round trip (tuples became lists) back in its in-memory form."""
    if task == "countdown":
        nums, t = target
        return [int(n) for n in nums], int(t)
    if task == "sudoku":
        return tuple(target)
    return target


def countdown_key(nums, target) -> tuple:
    """Identity of a Countdown item: numbers as a multiset (sorted tuple) and the target."""
    return tuple(sorted(int(n) for n in nums)), int(target)


def sudoku_test_indices() -> list[int]:
    """Row indices of d1's 256-puzzle Sudoku subset, in d1's order. RandomState(42) draws the same numbers as
    d1's `np.random.seed(42); np.random.choice(500, 256, replace=False)` without touching the global state."""
    return np.random.RandomState(42).choice(500, 256, replace=False).tolist()


def load_task(task: str, split: str, path=None, style: str = "rl", limit: int | None = None,
              *, test_path=None) -> list[dict]:
    """Examples of one task and split ("train", "val" or "test"). path: a local file with the task's raw fields
    (the training file for train/val, the test file for test); None downloads the source (tasks.md).
    test_path: Countdown train/val only, the test file whose items are removed from training (default: d1's).
    "code" has train/val only (evaluate coding on "humaneval" and "mbpp"), which have a test split only."""
    _check(task, TASKS, "task")
    _check(split, SPLITS, "split")
    source_split = "test" if split == "test" else "train"  # val is carved out of the training data
    if (task, source_split) not in SOURCES:
        have = ["test"] if (task, "test") in SOURCES else ["train", "val"]
        raise ValueError(f"task {task!r} has no {split!r} split (it has {', '.join(have)})"
                         + ("; evaluate coding on humaneval and mbpp" if task == "code" else ""))
    rows, src = _raw_rows(task, source_split, path)
    items = [(i, *PARSERS[task](row, src, i)) for i, row in enumerate(rows)]  # (row index, fields, target)
    if source_split == "train":
        if task == "countdown":  # d1 trains on the 3-number items only
            n = len(items)
            items = [it for it in items if len(it[1]["nums"]) == 3]
            _log(f"countdown {src}: kept {len(items)} of {n} items with 3 numbers ({n - len(items)} filtered out)")
        if task == "code":
            n = len(items)
            items = [it for it in items if sandbox_gradable(it[2]["tests"][0])]
            _log(f"code {src}: kept {len(items)} of {n} items whose tests the sandbox runs as written "
                 f"({n - len(items)} with parametrized, fixture or class-based tests filtered out)")
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(items))  # == datasets' shuffle(seed=42)
        items = [items[j] for j in order]
        k = min(HOLDOUT[task], len(items) // 10)
        items = items[len(items) - k:] if split == "val" else items[:len(items) - k]
        if task == "countdown":
            test_keys = {countdown_key(*ex["target"]) for ex in load_task("countdown", "test", test_path)}
            n = len(items)
            items = [it for it in items if countdown_key(*it[2]) not in test_keys]
            _log(f"countdown {split}: removed {n - len(items)} of {n} items that equal a test item "
                 f"(numbers as a multiset and target); {len(items)} left")
    elif task == "math":  # d1 scored MATH-500 against its `answer` field, not the solution's last \boxed{}
        items = [(i, f, rows[i]["answer"].strip() if isinstance(rows[i].get("answer"), str)
                  and rows[i]["answer"].strip() else t) for i, f, t in items]
    elif task == "sudoku":
        if len(items) == 500:
            items = [items[j] for j in sudoku_test_indices()]
        else:
            _log(f"sudoku test {src}: {len(items)} rows, not d1's 500: using all rows, not d1's 256-row subset")
    items = items[:limit] if limit is not None else items  # before building prompts: Countdown has ~490k items
    return [make_example(task, f, t, f"{task}/{source_split}/{i}", style) for i, f, t in items]


def load_tasks(spec: str, split: str, path=None, style: str = "rl", limit: int | None = None,
               *, test_path=None) -> list[dict]:
    """One task or a comma-separated mix ("gsm8k,countdown"): the concatenation, each example keeping its "task".
    path: None, or one comma-separated path per task; limit applies per task."""
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    paths = [None] * len(tasks) if path is None else [p.strip() or None for p in str(path).split(",")]
    if len(paths) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks ({spec!r}) but {len(paths)} paths ({path!r})")
    return [ex for t, p in zip(tasks, paths) for ex in load_task(t, split, p, style, limit, test_path=test_path)]


# -----------------------------------------------------------------------------
# Synthetic data: 4x4 Sudoku with unique solutions, solvable 3-number Countdown

# the 8 other cells sharing a row, column or 2x2 box with each cell
_PEERS = [sorted(({r * 4 + j for j in range(4)} | {i * 4 + c for i in range(4)}
                  | {(r // 2 * 2 + i) * 4 + c // 2 * 2 + j for i in range(2) for j in range(2)}) - {r * 4 + c})
          for r in range(4) for c in range(4)]


def _count(cells: list[int], limit: int) -> int:
    try:
        k = cells.index(0)
    except ValueError:
        return 1
    found = 0
    for d in range(1, 5):
        if all(cells[p] != d for p in _PEERS[k]):
            cells[k] = d
            found += _count(cells, limit - found)
            cells[k] = 0
            if found >= limit:
                break
    return found


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of a 4x4 puzzle ('0' = blank), counting stops at `limit`."""
    cells = [int(ch) for ch in puzzle]
    if any(d and any(cells[p] == d for p in _PEERS[k]) for k, d in enumerate(cells)):
        return 0  # the givens already clash
    return _count(cells, limit)


@functools.lru_cache(maxsize=1)
def _all_grids() -> tuple[str, ...]:
    grids = []

    def fill(cells, k):
        if k == 16:
            grids.append("".join(map(str, cells)))
            return
        for d in range(1, 5):
            if all(cells[p] != d for p in _PEERS[k] if p < k):
                cells[k] = d
                fill(cells, k + 1)
                cells[k] = 0

    fill([0] * 16, 0)
    assert len(grids) == 288, len(grids)
    return tuple(grids)


@functools.lru_cache(maxsize=1)
def _grid_set() -> frozenset:
    return frozenset(_all_grids())


def all_sudoku_grids() -> list[str]:
    """All 288 valid 4x4 Sudoku grids, in lexicographic order."""
    return list(_all_grids())


def generate_sudoku(n: int, blanks: int | tuple[int, int] = (4, 10), seed: int = 0, grids=None,
                    style: str = "compact") -> list[dict]:
    """n distinct puzzles with a unique solution. Per puzzle: draw a grid (from `grids`, default all 288) and a
    number of blanks in [lo, hi], blank cells in random order while the solution stays unique; when the greedy
    pass cannot reach that number, retry with another grid and order. Deterministic per seed."""
    lo, hi = (blanks, blanks) if isinstance(blanks, int) else blanks
    if not 0 <= lo <= hi <= 12:  # a 4x4 Sudoku with a unique solution has at least 4 givens
        raise ValueError(f"blanks must satisfy 0 <= lo <= hi <= 12, got {blanks}")
    pool = all_sudoku_grids() if grids is None else list(grids)
    if not pool or any(g not in _grid_set() for g in pool):
        raise ValueError("grids must be a non-empty list of valid 4x4 Sudoku grids")
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(100 * n + 1000):
        if len(out) == n:
            break
        grid, k = rng.choice(pool), rng.randint(lo, hi)
        cells, removed = list(grid), 0
        for c in rng.sample(range(16), 16):
            if removed == k:
                break
            cells[c] = "0"
            if count_solutions("".join(cells)) == 1:
                removed += 1
            else:
                cells[c] = grid[c]
        puzzle = "".join(cells)
        if removed == k and puzzle not in seen:
            seen.add(puzzle)
            out.append(make_example("sudoku", {"puzzle": puzzle}, (puzzle, grid), f"sudoku/gen{seed}/{len(out)}", style))
    if len(out) < n:
        raise RuntimeError(f"could only make {len(out)} of {n} distinct puzzles with {blanks} blanks from {len(pool)} grids")
    return out


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def generate_countdown(n: int, seed: int = 0, lo: int = 1, hi: int = 100, max_target: int = 100,
                       style: str = "compact", keep: Callable[[tuple], bool] | None = None) -> list[dict]:
    """n distinct 3-number Countdown items whose target (an integer in [1, max_target], like d1's test set) is the
    value of a random expression using each number once with + - * / (exact fractions inside). The expression is
    stored as "solution". keep(countdown_key) can reject items (used to keep splits disjoint)."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            break
        nums = [rng.randint(lo, hi) for _ in range(3)]
        a, b, c = (Fraction(x) for x in rng.sample(nums, 3))  # expression order independent of the prompt's order
        o1, o2 = rng.choice("+-*/"), rng.choice("+-*/")
        try:
            if rng.random() < 0.5:
                value, expr = _OPS[o2](_OPS[o1](a, b), c), f"({a}{o1}{b}){o2}{c}"
            else:
                value, expr = _OPS[o1](a, _OPS[o2](b, c)), f"{a}{o1}({b}{o2}{c})"
        except ZeroDivisionError:
            continue
        if value.denominator != 1 or not 1 <= value <= max_target:
            continue
        key = countdown_key(nums, value)
        if key in seen or (keep is not None and not keep(key)):
            continue
        seen.add(key)
        ex = make_example("countdown", {"nums": nums, "target": int(value)}, (nums, int(value)),
                          f"countdown/gen{seed}/{len(out)}", style)
        ex["solution"] = expr
        out.append(ex)
    if len(out) < n:
        raise RuntimeError(f"could only make {len(out)} of {n} distinct Countdown items in [{lo}, {hi}]")
    return out


def _countdown_split(key: tuple) -> str:
    # a stable hash of the item picks its split: disjoint by construction, for any seeds and sizes
    b = zlib.crc32(repr(key).encode()) % 10
    return "test" if b == 0 else "val" if b == 1 else "train"


def synthetic_task(task: str, split: str, n: int, seed: int = 0, style: str = "compact",
                   blanks: int | tuple[int, int] = (4, 10)) -> list[dict]:
    """Generated train/val/test data. Sudoku: the 288 solution grids are split (by `seed`) 192/48/48 into
    train/val/test, so test puzzles have unseen solutions. Countdown: each (numbers, target) item belongs to one
    split by a stable hash. Puzzle sampling uses a seed distinct for every (seed, split)."""
    _check(task, ("sudoku", "countdown"), "synthetic task")
    _check(split, SPLITS, "split")
    split_seed = 3 * seed + SPLITS.index(split)  # a bijection: no two (seed, split) pairs share a stream
    if task == "sudoku":
        grids = all_sudoku_grids()
        random.Random(seed).shuffle(grids)
        grids = {"test": grids[:48], "val": grids[48:96], "train": grids[96:]}[split]
        out = generate_sudoku(n, blanks, split_seed, grids, style)
    else:
        out = generate_countdown(n, split_seed, style=style, keep=lambda key: _countdown_split(key) == split)
    for i, ex in enumerate(out):
        ex["id"] = f"{task}/synthetic-{split}-s{seed}/{i}"
    return out


# -----------------------------------------------------------------------------
# SFT data


def _first(v):
    return v[0] if isinstance(v, (list, tuple, np.ndarray)) and len(v) else v


# d1's SFT data, and s1K-1.1: the same 1,000 questions with DeepSeek-R1's reasoning traces
S1K_HUB = {"s1k": "simplescaling/s1K", "s1k-1.1": "simplescaling/s1K-1.1"}


def load_s1k(path=None, hub: str = S1K_HUB["s1k"]) -> list[dict]:
    """s1K as SFT pairs {"id", "prompt": d1's SFT user message, "answer": d1's <reasoning>/<answer> text}.
    path: a local copy, else the train split of the hub's `hub` (S1K_HUB: simplescaling/s1K, d1's data, or
    simplescaling/s1K-1.1). s1K rows (question, thinking_trajectories, attempt) use the first of
    `thinking_trajectories`; s1K-1.1 rows, whose release renamed the fields (question, deepseek_thinking_trajectory,
    deepseek_attempt: DeepSeek-R1's traces; gemini_* hold s1K's), use the DeepSeek ones, the point of that
    release."""
    rows, src = (read_rows(path), str(path)) if path is not None else (_hub_rows(hub, None, "train"), f"{hub}:train")
    out = []
    for i, row in enumerate(rows):
        q = _text(row, ("question",), src, i)
        if row.get("thinking_trajectories") is None and row.get("deepseek_thinking_trajectory") is not None:  # 1.1
            thinking = _text(row, ("deepseek_thinking_trajectory",), src, i)
            attempt = _text(row, ("deepseek_attempt",), src, i)
        else:  # s1K (the error for neither names both layouts' field)
            thinking = _first(_field(row, ("thinking_trajectories", "deepseek_thinking_trajectory"), src, i))
            if not isinstance(thinking, str):
                raise ValueError(f"{src}: row {i + 1}: field 'thinking_trajectories' must be a list of strings")
            attempt = _text(row, ("attempt",), src, i)
        out.append({"id": f"s1k/{i}", "prompt": sft_user_message(q), "answer": sft_answer(thinking, attempt)})
    return out


def load_sft_file(path) -> list[dict]:
    """Your own SFT pairs: a local file whose rows have "prompt" (the user message, not templated) and "answer"
    (the target text) strings."""
    rows, src = read_rows(path), str(path)
    return [{"id": f"sft/{Path(path).stem}/{i}", "prompt": _text(r, ("prompt",), src, i),
             "answer": _text(r, ("answer",), src, i)} for i, r in enumerate(rows)]
