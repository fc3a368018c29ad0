r"""Answer parsers, RL rewards and evaluation verdicts for d1's tasks: GSM8K, MATH, Countdown, 4x4 Sudoku, and
the coding tasks: KodCode training ("code"), HumanEval and MBPP evaluation.

Pure standard-library Python (no torch), two entry points:

* ``reward(task, completion, target)``: the training reward of one completion as named components plus
  ``"total"``; ``score(task, completions, targets)`` is the batched form the RL loop calls.
* ``eval_score(task, completion, target)``: the evaluation verdict in [0, 1] of d1's "generous" parsers.

Reward components (d1's values; COMPONENT_RANGE holds each range, REWARD_RANGE the totals):
  gsm8k      correctness 2.0 | integer 0.5 | strict_format 0.5 | soft_format 0.5 | xml_count in [0, 0.5]
             total in [0, 4]
  math       correctness 2.0 | format 0.5 * ([<answer> present] + (1 if \boxed present else 0.5)), in
             [0.25, 1]; total in [0.25, 3]
  countdown  correctness 0 (no <answer>...</answer>), 0.1 (present but wrong numbers, wrong value or not
             parsable), 1.0 (uses the given numbers once each and hits the target within 1e-5)
  sudoku     correctness = fraction of the puzzle's empty cells whose answer digit equals the solution's
  code       correctness = fraction of the target's tests the extracted program passes, each test in its own
             sandboxed process | format = sandbox.FORMAT_BONUS (0.1) when the code block is inside <answer>;
             total in [0, 1.1]. humaneval and mbpp share it (they are only evaluated, never trained on).

Coding verdicts (code, humaneval, mbpp): sandbox.pass_at_1, 1.0 iff the program passes ALL the target's tests in
one process (the HumanEval/MBPP harness), else 0.0. A coding target is {"tests": [str, ...]} (data.py). The
program is the last fenced block of the last <answer> that has one, else the last block of the text
(sandbox.extract_code, linear time). Time is bounded by the sandbox's timeouts (5 s per run). score() and
eval_scores() run the sandboxes of a batch in parallel (CODE_WORKERS).

Deliberate fixes of the public d1 code (each changes its numbers):
  1. DOTALL: d1's strict and soft format regexes lacked re.DOTALL, so multi-line reasoning never matched.
     We check the same patterns as if DOTALL were on, with str.find in linear time (the regexes themselves
     backtrack quadratically on adversarial text).
  2. \boxed: d1 tested ``"\boxed" in text`` without a raw string ("\b" is a backspace), so the MATH format
     reward never saw a box. We test for a real backslash-boxed.
  3. GSM8K numbers: d1's evaluation ground-truth regex dropped minus signs and its integer reward used
     str.isdigit. We compare answers as numbers when both parse ("-3", "1,000", "2.50" == "2.5") and the
     integer reward accepts negative and comma-grouped integers.
  4. xml_count: d1 subtracted 0.001 per "trailing" character without bound, and for the "\n<answer>\n" tag
     that tail is the WHOLE completion when "\n</answer>\n" is absent (the usual case: completions end at
     </answer>), so a long, correct answer scored far below zero. Each of the two penalties is capped at
     the 0.125 its tag earns (and d1's +0.001 for an empty tail is dropped), so xml_count is in [0, 0.5];
     short completions score as in d1.
  5. Countdown: d1 ran Python eval() on the answer (a ``9**9**9**9`` hangs training). countdown_value
     parses with ast and evaluates only + - * /, unary minus and parentheses on short numeric literals.
Smaller deviations: the strict format accepts a completion that ends right at </answer> (d1 required a
trailing newline, which completions decoded without their EOS never have); Countdown answers with a decimal
point are rejected (they would let a model glue given numbers, 3.5 from 3 and 5); brace matching is one
linear pass, so every function here returns in bounded time on any string.
"""

import ast
import concurrent.futures
import math
import operator
import os
import re

import sandbox

# ----------------------------------------------------------------------------- extraction

def extract_answer(text: str) -> str:
    """d1's extraction: the text after the last <answer> and before the next </answer>, stripped
    (the whole text, stripped, when there is no <answer>)."""
    return text.rpartition("<answer>")[2].partition("</answer>")[0].strip()


def _last_answer_block(text: str) -> str | None:
    """Content of the last complete <answer>...</answer> block, or None."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return None if start < 0 else text[start + len("<answer>"):end]


def _first_answer_block(text: str) -> str | None:
    """Content of the first complete <answer>...</answer> block, or None."""
    start = text.find("<answer>")
    end = text.find("</answer>", start + len("<answer>")) if start >= 0 else -1
    return None if end < 0 else text[start + len("<answer>"):end]


# "\boxed{", "\boxed {" and "\fbox{" open a box; bare braces only matter for matching.
_BRACE_TOKEN = re.compile(r"\\(?:boxed|fbox)[ \t]{0,8}\{|[{}]")


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the content of every brace-matched box, ordered by opening position.
    One pass with a stack, so nested or unbalanced braces cost linear time, never quadratic."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []  # the common case costs two substring searches
    stack, spans = [], []
    for m in _BRACE_TOKEN.finditer(text):
        if m.group() != "}":
            stack.append((m.group() != "{", m.end()))  # (opens a box?, content start)
        elif stack:  # a stray "}" closes nothing
            is_box, start = stack.pop()
            if is_box:
                spans.append((start, m.start()))
    return sorted(spans)


def last_boxed(text: str) -> str | None:
    """Content of the last-opened brace-matched \\boxed{...} (or \\fbox{...}), stripped; None if none."""
    spans = _boxed_spans(text)
    return text[spans[-1][0]:spans[-1][1]].strip() if spans else None


def first_boxed(text: str) -> str | None:
    """Content of the first brace-matched box whose content is not blank, stripped; None if none."""
    for start, end in _boxed_spans(text):
        if text[start:end].strip():
            return text[start:end].strip()
    return None


# ----------------------------------------------------------------------------- numbers

# An optionally signed decimal, with "1,000"-style grouping allowed in the integer part.
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_INTEGER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)")
_FRAC_RE = re.compile(r"([-+]?)\\frac\{([-+]?\d+(?:\.\d+)?)\}\{([-+]?\d+(?:\.\d+)?)\}")
_SLASH_RE = re.compile(r"([-+]?\d+(?:\.\d+)?)/([-+]?\d+(?:\.\d+)?)")


def _to_float(s: str) -> float | None:
    """The number a short answer denotes ("-3", "1,000", "\\$2.50", "50%", "18.", "\\frac{1}{2}", "3/4"),
    or None when it is not exactly one number."""
    s = s.strip()
    if len(s) > 64:  # no answer we compare is longer; bounds the work on junk
        return None
    for junk in ("\\$", "$", "\\%", "%", "\\!", "\\,", " "):
        s = s.replace(junk, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    if re.fullmatch(_NUMBER, s):
        value = float(s.replace(",", ""))
    elif m := _FRAC_RE.fullmatch(s):
        sign, num, den = m.groups()
        value = float(num) / float(den) if float(den) else math.nan
        value = -value if sign == "-" else value
    elif m := _SLASH_RE.fullmatch(s):
        value = float(m[1]) / float(m[2]) if float(m[2]) else math.nan
    else:
        return None
    return value if math.isfinite(value) else None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# ----------------------------------------------------------------------------- GSM8K

def gsm8k_target(answer_text) -> str:
    """GSM8K target: the text after the last '####' of the answer (or the whole text), stripped;
    the last number in it when that text is prose rather than a number."""
    text = str(answer_text)
    text = text.rpartition("####")[2].strip()  # rpartition gives the whole text when '####' is absent
    if _to_float(text) is None and (numbers := _NUMBER_RE.findall(text)):
        text = numbers[-1]
    return text


def _strict_format(text: str) -> bool:
    r"""re.match(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\s*\Z", text, re.DOTALL),
    computed with str.find in linear time (fixes 1: DOTALL; and the trailing newline made optional)."""
    head, middle, tail = "<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>"
    if not text.startswith(head):
        return False
    end = text.rfind(tail)
    if end < 0 or text[end + len(tail):].strip():
        return False
    mid = text.find(middle, len(head))  # the earliest separator leaves the most room for the answer
    return 0 <= mid and mid + len(middle) <= end


_SOFT_MIDDLE = re.compile(r"</reasoning>\s*<answer>")


def _soft_format(text: str) -> bool:
    r"""re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text, re.DOTALL), in linear time."""
    if not text.startswith("<reasoning>"):
        return False
    m = _SOFT_MIDDLE.search(text, len("<reasoning>"))
    return m is not None and text.find("</answer>", m.end()) >= 0


def xml_count(text: str) -> float:
    """d1's tag-count reward: +0.125 per tag that occurs exactly once, minus 0.001 per trailing character;
    each penalty is capped at its tag's 0.125 (fix 4), so the result is in [0, 0.5]."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        # d1's tail: the text after the last "\n</answer>\n", i.e. the whole text when that is absent.
        count += 0.125 - min(0.125, 0.001 * len(text.split("\n</answer>\n")[-1]))
    if text.count("\n</answer>") == 1:
        # One newline after </answer> is free; d1's +0.001 for an empty tail is clamped away.
        count += 0.125 - min(0.125, 0.001 * max(0, len(text.split("\n</answer>")[-1]) - 1))
    return count


def gsm8k_reward(completion: str, target) -> dict[str, float]:
    """GSM8K training reward components (target: answer text with or without '#### n', or a number)."""
    answer, gold_text = extract_answer(completion), gsm8k_target(target)
    pred, gold = _to_float(answer), _to_float(gold_text)
    # Numbers when both parse ("2.50" == "2.5", "1,000" == "1000"), else the stripped strings (d1's test).
    correct = _close(pred, gold) if pred is not None and gold is not None else answer == gold_text
    return {
        "correctness": 2.0 if correct else 0.0,
        "integer": 0.5 if _INTEGER_RE.fullmatch(answer) else 0.0,  # fix 3: "-3" and "1,000" count
        "strict_format": 0.5 if _strict_format(completion) else 0.0,
        "soft_format": 0.5 if _soft_format(completion) else 0.0,
        "xml_count": xml_count(completion),
    }


def gsm8k_prediction(completion: str) -> float | None:
    """The evaluation parser: the first non-blank \\boxed{} (its number, or its first number), else the
    <answer> content (its number, or its last number); None when there is no number."""
    pred = None
    boxed = first_boxed(completion)
    if boxed is not None:  # d1's pattern stopped at the first "}"; ours is brace-matched
        pred = _to_float(boxed)
        if pred is None and (m := _NUMBER_RE.search(boxed)):
            pred = _to_float(m.group())
    if pred is None:
        answer = extract_answer(completion)
        pred = _to_float(answer)
        if pred is None and (numbers := _NUMBER_RE.findall(answer)):
            pred = _to_float(numbers[-1])
    return pred


def gsm8k_eval(completion: str, target) -> float:
    """1.0 iff the parsed prediction equals the target as a number."""
    pred = gsm8k_prediction(completion)
    gold = _to_float(gsm8k_target(target))
    return 1.0 if pred is not None and gold is not None and _close(pred, gold) else 0.0


# ----------------------------------------------------------------------------- MATH

_TEXT_TAIL = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d+\}?)?\Z")  # "10\text{ cm}^2"
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalize_math(s: str) -> str:
    """Hendrycks-style answer normaliser: drops spacing, \\left/\\right, units, degrees, dollars and
    percent signs, "x =" prefixes and thousands commas; writes dfrac/tfrac and \\frac12 as \\frac{1}{2},
    a/b as \\frac{a}{b}, .5 as 0.5 and 3.0 as 3."""
    s = str(s).strip().replace("\n", "")
    for old, new in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\\\", "\\"), ("tfrac", "frac"),
                     ("dfrac", "frac"), ("\\left", ""), ("\\right", ""), ("\\displaystyle", ""),
                     ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", "")):
        s = s.replace(old, new)
    if (m := _TEXT_TAIL.search(s)) and _to_float(s[:m.start()]) is not None:
        s = s[:m.start()]  # a unit after a number: "10\text{ cm}" -> "10"
    s = _TEXT_WRAP.sub(r"\1", s)  # any other \text{X} -> X
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    lhs, _, rhs = s.partition("=")
    if s.count("=") == 1 and len(lhs.strip()) <= 2:  # "x = 5" -> "5"
        s = rhs
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s).replace(" ", "").rstrip(".")
    s = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", s)  # \frac12 -> \frac{1}{2}
    s = re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", s)  # \frac1{2}
    s = re.sub(r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}", s)  # \frac{1}2
    if m := re.fullmatch(r"(-?\d+)/(\d+)", s):
        s = f"\\frac{{{m[1]}}}{{{m[2]}}}"
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if m := re.fullmatch(r"(-?\d+)\.0+", s):
        s = m[1]
    return s


def math_equal(pred: str | None, target: str | None) -> bool:
    """True iff the normalised answers are equal as strings, or as numbers when both parse as one
    (decimals, \\frac{a}{b}, a/b)."""
    if pred is None or target is None:
        return False
    a, b = normalize_math(pred), normalize_math(target)
    if a and a == b:
        return True
    x, y = _to_float(a), _to_float(b)
    return x is not None and y is not None and _close(x, y)


def _math_target(target) -> str:
    boxed = last_boxed(str(target))  # a reference solution: its last box; a final answer: itself
    return boxed if boxed is not None else str(target).strip()


def math_prediction(completion: str) -> str:
    """The evaluation parser: the last \\boxed{}, else the <answer> content."""
    pred = last_boxed(completion)
    return pred if pred is not None else extract_answer(completion)


def math_eval(completion: str, target) -> float:
    """1.0 iff the parsed prediction equals the target's final answer."""
    return 1.0 if math_equal(math_prediction(completion), _math_target(target)) else 0.0


def math_reward(completion: str, target) -> dict[str, float]:
    """MATH training reward components (target: the reference solution or its final answer)."""
    has_answer = 1.0 if "<answer>" in completion else 0.0
    has_box = "\\boxed" in completion  # fix 2: a real backslash, d1's "\boxed" held a backspace
    return {"correctness": 2.0 * math_eval(completion, target),
            "format": 0.5 * (has_answer + (1.0 if has_box else 0.5))}


# ----------------------------------------------------------------------------- Countdown

_MAX_EXPR_CHARS = 200  # 3-4 numbers need ~20 characters; the bound caps the parse and evaluation work
_MAX_DEPTH = 100  # AST depth; 200 characters cannot nest deeper, the check makes the bound explicit
_ARITH_CHARS = re.compile(r"[\d\s+\-*/().]*")  # names, quotes, commas, "e", "%", "_" never get parsed
_LONG_LITERAL = re.compile(r"\d{11}")  # literals of more than 10 digits are invalid
_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class _NotArithmetic(ValueError):
    """The expression has a node other than a number, + - * /, or unary minus."""


def _arith(node: ast.AST, depth: int) -> float:
    if depth > _MAX_DEPTH:
        raise _NotArithmetic("too deep")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)  # floats throughout: no big-integer blow-up, overflow becomes inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arith(node.operand, depth + 1)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:  # ** // % are not in the table
        return _BINARY_OPS[type(node.op)](_arith(node.left, depth + 1), _arith(node.right, depth + 1))
    raise _NotArithmetic(type(node).__name__)


def countdown_value(expr: str) -> float | None:
    """Value of an arithmetic expression of + - * /, unary minus and parentheses on numbers, or None when
    it is anything else, too long, divides by zero or is not finite. Never runs the text as code (fix 5)."""
    if len(expr) > _MAX_EXPR_CHARS or not _ARITH_CHARS.fullmatch(expr) or _LONG_LITERAL.search(expr):
        return None
    try:  # newlines inside an answer are layout, not syntax: parse the expression on one line
        value = _arith(ast.parse(" ".join(expr.split()), mode="eval").body, 0)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError):
        return None  # ValueError includes _NotArithmetic
    return value if math.isfinite(value) else None


def countdown_numbers(expr: str) -> list[int]:
    """The integers written in an expression, in order (digit runs over 18 long, never valid, are skipped)."""
    return [int(run) for run in re.findall(r"\d+", expr) if len(run) <= 18]


def _countdown_correct(expr: str, numbers, goal) -> bool:
    """expr uses exactly the given numbers (as a multiset, no decimal points) and hits the goal within 1e-5."""
    if "." in expr or sorted(countdown_numbers(expr)) != sorted(int(n) for n in numbers):
        return False
    value = countdown_value(expr)
    return value is not None and abs(value - float(goal)) < 1e-5


def countdown_reward(completion: str, target) -> dict[str, float]:
    """Countdown training reward (target: (numbers, goal)): d1's 0 / 0.1 / 1.0 on the last <answer> block."""
    numbers, goal = target
    block = _last_answer_block(completion)
    if block is None:
        return {"correctness": 0.0}
    return {"correctness": 1.0 if _countdown_correct(block.strip(), numbers, goal) else 0.1}


_LATEX_OPS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"),
              ("\\left", ""), ("\\right", ""))


def countdown_expression(completion: str) -> str:
    """The evaluation parser's expression: the first non-blank \\boxed{} (else the <answer> content, else
    the text) with LaTeX operators mapped, cut to the arithmetic before the first "=" when there is one."""
    text = first_boxed(completion)
    text = extract_answer(completion) if text is None else text
    for latex, op in _LATEX_OPS:
        text = text.replace(latex, op)
    if "=" in text:
        # The run of arithmetic characters right before "="; matching the reversed string keeps it linear.
        text = _ARITH_CHARS.match(text.partition("=")[0][::-1]).group()[::-1]
    return text.strip()


def countdown_eval(completion: str, target) -> float:
    """1.0 iff the parsed expression uses the given numbers once each and evaluates to the goal."""
    numbers, goal = target
    return 1.0 if _countdown_correct(countdown_expression(completion), numbers, goal) else 0.0


# ----------------------------------------------------------------------------- Sudoku

_SIXTEEN_DIGITS = re.compile(r"\d{16}")


def parse_sudoku(text: str) -> str:
    """Evaluation parser: the first <answer> block (else the first 16-digit run), whitespace removed,
    padded with '0' (never a solution digit) or truncated to 16 characters."""
    block = _first_answer_block(text)
    if block is None:
        m = _SIXTEEN_DIGITS.search(text)
        block = m.group() if m else ""
    return "".join(block.split())[:16].ljust(16, "0")


def _blank_fraction(grid: str, puzzle: str, solution: str) -> float:
    """Fraction of the puzzle's '0' cells where grid has the solution's digit (0.0 for a full puzzle)."""
    blanks = [i for i, cell in enumerate(puzzle[:16]) if cell == "0"]
    return sum(grid[i] == solution[i] for i in blanks) / len(blanks) if blanks else 0.0


def sudoku_reward(completion: str, target) -> dict[str, float]:
    """Sudoku training reward (target: (puzzle, solution)): d1's reward reads the digits of the last
    <answer> block; no block scores 0."""
    puzzle, solution = target
    block = _last_answer_block(completion) or ""
    grid = "".join(ch for ch in block if ch.isdecimal())[:16].ljust(16, "0")
    return {"correctness": _blank_fraction(grid, puzzle, solution)}


def sudoku_eval(completion: str, target) -> float:
    """Fraction of the puzzle's empty cells that the parsed grid fills correctly."""
    puzzle, solution = target
    return _blank_fraction(parse_sudoku(completion), puzzle, solution)


# ----------------------------------------------------------------------------- coding (KodCode, HumanEval, MBPP)

CODE_WORKERS = min(8, os.cpu_count() or 1)  # sandboxes run at once by score() / eval_scores()


def code_tests(target) -> list[str]:
    """The tests of a coding target {"tests": [str, ...]}; a malformed target is a caller's bug and raises (an
    empty list too: pass@1 would then accept any program that runs)."""
    tests = target.get("tests") if isinstance(target, dict) else None
    if not isinstance(tests, (list, tuple)) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError(f'a coding target is {{"tests": [str, ...]}} (at least one), got {str(target)[:200]!r}')
    return list(tests)


def code_reward(completion: str, target) -> dict[str, float]:
    """Coding training reward: sandbox.code_reward (fraction of tests passed + format bonus), tests run one after
    another (score() parallelises over completions instead)."""
    tests = code_tests(target)
    r = sandbox.code_reward(completion, tests, workers=1)
    return {"correctness": float(r["correctness"]), "format": float(r["format"])}


def code_eval(completion: str, target) -> float:
    """pass@1 verdict: 1.0 iff the extracted program passes all tests in one sandboxed run."""
    tests = code_tests(target)
    return sandbox.pass_at_1(completion, tests)


def code_prediction(completion: str) -> str:
    """The program the verdict runs ("" when there is none)."""
    return sandbox.extract_code(completion) or ""


# ----------------------------------------------------------------------------- dispatch

# task -> (training reward, evaluation verdict, (min, max) of every reward component). A training reward
# returns its components only; reward() adds "total". Adding a task is one entry here.
_CODE = (code_reward, code_eval, {"correctness": (0.0, 1.0), "format": (0.0, sandbox.FORMAT_BONUS)})
_TASKS = {
    "gsm8k": (gsm8k_reward, gsm8k_eval, {"correctness": (0.0, 2.0), "integer": (0.0, 0.5),
              "strict_format": (0.0, 0.5), "soft_format": (0.0, 0.5), "xml_count": (0.0, 0.5)}),
    "math": (math_reward, math_eval, {"correctness": (0.0, 2.0), "format": (0.25, 1.0)}),
    "countdown": (countdown_reward, countdown_eval, {"correctness": (0.0, 1.0)}),
    "sudoku": (sudoku_reward, sudoku_eval, {"correctness": (0.0, 1.0)}),
    "code": _CODE,
    "humaneval": _CODE,
    "mbpp": _CODE,
}
TASKS = tuple(_TASKS)  # ("gsm8k", "math", "countdown", "sudoku", "code", "humaneval", "mbpp")
CODE_TASKS = ("code", "humaneval", "mbpp")  # verdicts run programs: batches are scored in parallel
COMPONENT_RANGE = {task: spec[2] for task, spec in _TASKS.items()}
# Every component can reach its bounds independently, so the total's range is the sum of theirs.
REWARD_RANGE = {task: (sum(lo for lo, _ in r.values()), sum(hi for _, hi in r.values()))
                for task, r in COMPONENT_RANGE.items()}


def _lookup(task: str):
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return _TASKS[task]


def reward(task: str, completion: str, target) -> dict[str, float]:
    """Training reward components of one completion, plus their sum under "total"."""
    parts = dict(_lookup(task)[0](completion, target))
    parts["total"] = sum(parts.values())
    return parts


def _map(task: str, fn, completions: list[str], targets: list, workers: int | None) -> list:
    """[fn(c, t) ...] in order; for coding tasks on a thread pool (each call waits on its sandbox processes)."""
    if len(completions) != len(targets):
        raise ValueError(f"{len(completions)} completions but {len(targets)} targets")
    _lookup(task)
    workers = min(workers or CODE_WORKERS, len(completions))
    if task not in CODE_TASKS or workers <= 1:
        return [fn(c, t) for c, t in zip(completions, targets)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, completions, targets))


def score(task: str, completions: list[str], targets: list, workers: int | None = None) -> dict[str, list[float]]:
    """Batched reward: component name (and "total") -> one value per completion. Coding tasks run up to
    `workers` (default CODE_WORKERS) sandboxes at once."""
    rows = _map(task, lambda c, t: reward(task, c, t), completions, targets, workers)
    return {name: [row[name] for row in rows] for name in [*COMPONENT_RANGE[task], "total"]}


def eval_score(task: str, completion: str, target) -> float:
    """Evaluation verdict in [0, 1] of d1's generous parser for the task (coding: pass@1)."""
    return float(_lookup(task)[1](completion, target))


def eval_scores(task: str, completions: list[str], targets: list, workers: int | None = None) -> list[float]:
    """eval_score of each (completion, target), in order; coding tasks run up to `workers` sandboxes at once."""
    return _map(task, lambda c, t: eval_score(task, c, t), completions, targets, workers)


# What the evaluation parser of each task read from a completion, as text (eval.py stores it per item).
_PREDICTIONS = {
    "gsm8k": lambda c: "" if (p := gsm8k_prediction(c)) is None else f"{p:g}",
    "math": math_prediction,
    "countdown": countdown_expression,
    "sudoku": parse_sudoku,
    "code": code_prediction,
    "humaneval": code_prediction,
    "mbpp": code_prediction,
}


def parsed_answer(task: str, completion: str) -> str:
    """The answer the evaluation parser of `task` extracts from `completion` (for logs and inspection)."""
    _lookup(task)
    return _PREDICTIONS[task](completion)
