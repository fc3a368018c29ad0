"""rewards.py: exact reward components on realistic completions, the evaluation parsers, the safe Countdown
evaluator, the d1 fixes, and property tests (never raises, stays in range, bounded time) on random and
adversarial strings. Pure Python; the Countdown/Sudoku test files are used when present."""
import csv
import json
import math
import random
import re
import time
from fractions import Fraction
from itertools import permutations
from pathlib import Path

import pytest

from rewards import (COMPONENT_RANGE, REWARD_RANGE, TASKS, countdown_expression, countdown_numbers,
                     countdown_value, eval_score, extract_answer, first_boxed, gsm8k_target, last_boxed,
                     math_equal, normalize_math, parse_sudoku, reward, score)

DATA = Path("/work/shared/data")
SUDOKU = ("3102200002100320", "3142243142131324")  # first row of the d1 test file: 8 blanks
GOOD = "<reasoning>\nabc\n</reasoning>\n<answer>\n42\n</answer>"  # 50 characters


def gsm(completion, target="#### 42"):
    return reward("gsm8k", completion, target)


# ----------------------------------------------------------------------------- GSM8K training reward

def test_gsm8k_well_formatted_exact_components():
    # xml_count by hand, d1's arithmetic: the four tags occur once each -> 4 * 0.125 = 0.5.
    # "\n<answer>\n" counts: its tail is the text after the last "\n</answer>\n"; that string is absent, so
    #   the tail is the whole text: -0.001 * 50 = -0.050.
    # "\n</answer>" counts: tail "" -> d1 subtracts 0.001 * (0 - 1), a +0.001 bonus; we clamp it to 0.
    # d1: 0.5 - 0.050 + 0.001 = 0.451; ours: 0.5 - 0.050 = 0.450.
    assert len(GOOD) == 50
    r = gsm(GOOD)
    assert r == pytest.approx({"correctness": 2.0, "integer": 0.5, "strict_format": 0.5, "soft_format": 0.5,
                               "xml_count": 0.45, "total": 3.95})
    # With a trailing newline both tails are free of charge: the full 0.5.
    assert gsm(GOOD + "\n")["xml_count"] == pytest.approx(0.5)


def test_gsm8k_multiline_reasoning_needs_dotall():
    text = ("<reasoning>\nNatalia sold 48 clips in April.\nIn May she sold half: 48 / 2 = 24.\n"
            "Total: 48 + 24 = 72.\n</reasoning>\n<answer>\n72\n</answer>")
    assert not re.match(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", text)  # d1: never
    r = gsm(text, "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72")
    assert (r["correctness"], r["strict_format"], r["soft_format"]) == (2.0, 0.5, 0.5)


def test_gsm8k_negative_comma_decimal_answers():
    wrap = "<reasoning>\nwork\n</reasoning>\n<answer>\n{}\n</answer>".format
    assert gsm(wrap("-3"), "#### -3")["correctness"] == 2.0
    assert gsm(wrap("-3"), "#### -3")["integer"] == 0.5  # d1's isdigit gave 0
    assert gsm(wrap("1,000"), "#### 1000")["correctness"] == 2.0
    assert gsm(wrap("1,000"), "1000")["integer"] == 0.5
    assert gsm(wrap("2.50"), "#### 2.5")["correctness"] == 2.0
    assert gsm(wrap("2.50"), "#### 2.5")["integer"] == 0.0
    assert gsm(wrap("$18"), "18")["correctness"] == 2.0
    assert gsm(wrap("18 dollars"), "18")["correctness"] == 0.0  # training is strict: not a bare number
    assert gsm(wrap("3"), "#### -3")["correctness"] == 0.0
    assert gsm(wrap("abc"), "abc")["correctness"] == 2.0  # non-numbers compare as stripped strings


def test_gsm8k_missing_tags_and_soft_format():
    r = gsm("The answer is 42.")
    assert r == {"correctness": 0.0, "integer": 0.0, "strict_format": 0.0, "soft_format": 0.0,
                 "xml_count": 0.0, "total": 0.0}
    soft = "<reasoning>think\nmore</reasoning> <answer>42</answer>"  # no newlines around tags
    r = gsm(soft)
    assert (r["correctness"], r["integer"], r["strict_format"], r["soft_format"], r["xml_count"]) == (
        2.0, 0.5, 0.0, 0.5, 0.0)
    assert gsm("<reasoning>\nx\n</reasoning>\n<answer>\n42\n")["soft_format"] == 0.0  # unclosed answer
    assert gsm("Sure! " + GOOD)["strict_format"] == gsm("Sure! " + GOOD)["soft_format"] == 0.0  # anchored


def test_gsm8k_long_completion_xml_count_bounded():
    long = "<reasoning>\n" + "step. " * 400 + "\n</reasoning>\n<answer>\n42\n</answer>"
    # d1: 0.5 - 0.001 * len(long) + 0.001 = about -1.9; ours caps the whole-text penalty at 0.125.
    assert gsm(long)["xml_count"] == pytest.approx(0.375)
    junk_after = GOOD + "\n" + "x" * 1000
    assert gsm(junk_after)["xml_count"] == pytest.approx(0.25)  # both tail penalties capped at 0.125
    assert gsm(junk_after)["strict_format"] == 0.0


def d1_xml_count(text):
    """d1's unbounded xml count, written from tasks.md."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125 - 0.001 * len(text.split("\n</answer>\n")[-1])
    if text.count("\n</answer>") == 1:
        count += 0.125 - 0.001 * (len(text.split("\n</answer>")[-1]) - 1)
    return count


PIECES = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", "\n", " ", "x", "42", "-"]


def test_format_checks_match_dotall_regexes_and_d1_xml_count():
    """Our linear-time format checks equal d1's regexes with DOTALL (and an optional trailing newline);
    xml_count equals d1's wherever d1's is not negative/bonus-bearing."""
    strict = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\s*\Z", re.DOTALL)
    soft = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
    rng = random.Random(0)
    texts = [GOOD, GOOD + "\n", "<reasoning>\n\n</reasoning>\n<answer>\n\n</answer>"]
    texts += ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14))) for _ in range(3000)]
    # Near-misses of the well-formed layout: random filler, a piece dropped, duplicated or inserted.
    for _ in range(2000):
        parts = ["<reasoning>\n", "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3))),
                 "\n</reasoning>\n<answer>\n", "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3))),
                 "\n</answer>", rng.choice(["", "\n", " \n", "x", "\n</answer>"])]
        i = rng.randrange(len(parts))
        parts[i] = rng.choice([parts[i], "", parts[i] * 2, parts[i] + rng.choice(PIECES)])
        texts.append("".join(parts))
    matches = sum(bool(strict.match(t)) for t in texts), sum(bool(soft.match(t)) for t in texts)
    assert 500 < matches[0] < len(texts) - 500 and 500 < matches[1] < len(texts) - 500  # both outcomes well covered
    for t in texts:
        r = gsm(t)
        assert r["strict_format"] == (0.5 if strict.match(t) else 0.0), repr(t)
        assert r["soft_format"] == (0.5 if soft.match(t) else 0.0), repr(t)
        bonus = 0.001 if t.count("\n</answer>") == 1 and t.endswith("\n</answer>") else 0.0
        assert r["xml_count"] == pytest.approx(d1_xml_count(t) - bonus), repr(t)  # all short: no cap hit


# ----------------------------------------------------------------------------- extraction and boxes

def test_extract_answer():
    assert extract_answer("<answer>\n 7 \n</answer>") == "7"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("<answer>unclosed 5") == "unclosed 5"
    assert extract_answer("  no tags  ") == "no tags"


def test_boxed_variants():
    assert last_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} and \boxed {x}") == "x"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\boxed{3} \boxed{4") == "3"  # the unbalanced last one is no answer
    assert last_boxed("no box {here}") is None and last_boxed(r"\boxed{") is None
    assert first_boxed(r"\boxed{} \boxed{ } \boxed{18} \boxed{19}") == "18"
    assert first_boxed(r"\boxed{\boxed{5}}") == r"\boxed{5}"


# ----------------------------------------------------------------------------- GSM8K evaluation

@pytest.mark.parametrize("completion, target, expected", [
    ("<reasoning>\n...\n</reasoning>\n<answer>\n\\boxed{72}\n</answer>", "#### 72", 1.0),
    ("<answer>\n\\boxed{-3}\n</answer>", "He loses 3.\n#### -3", 1.0),  # d1's target regex lost the minus
    ("<answer>\\boxed{1,000}</answer>", "#### 1000", 1.0),
    ("<answer>\\boxed{\\$18.00}</answer>", "18", 1.0),
    ("<answer>\\boxed{18 \\text{ dollars}}</answer>", "18", 1.0),  # first number of the box
    ("\\boxed{} then \\boxed{5} then \\boxed{6}", "5", 1.0),  # the first NON-EMPTY box
    ("<answer>\nShe has 12 apples, so 7\n</answer>", "7", 1.0),  # no box: last number of <answer>
    ("<answer>\n2.5\n</answer>", 2.5, 1.0),
    ("reasoning says 5 and finally 9", "#### 9", 1.0),  # no tags: last number of the text
    ("<answer>\\boxed{8}</answer>", "#### 9", 0.0),
    ("", "#### 9", 0.0),
])
def test_gsm8k_eval(completion, target, expected):
    assert eval_score("gsm8k", completion, target) == expected


def test_gsm8k_target():
    assert gsm8k_target("48/2 = <<48/2=24>>24\n#### 72") == "72"
    assert gsm8k_target(" -3 ") == "-3" and gsm8k_target(15) == "15"
    assert gsm8k_target("So the answer is 1,200.") == "1,200"


# ----------------------------------------------------------------------------- MATH

@pytest.mark.parametrize("a, b", [
    (r"\frac{1}{2}", "0.5"), (r"\dfrac12", ".5"), (r"\tfrac{1}{2}", "1/2"), (r"-\frac{1}{2}", "-0.5"),
    (r"10\text{ cm}", "10"), (r"90^\circ", "90"), (r"\$5", "5"), (r"50\%", "50"), ("x = 3", "3"),
    (r"\left( 1, 2 \right)", "(1,2)"), (r"\sqrt2", r"\sqrt{2}"), ("1,000", "1000"), ("5.0", "5"),
    (r"\text{Evelyn}", "Evelyn"), (r"2\sqrt{3}", r"2 \sqrt{3}"), (r"\frac{\pi}{4}", r"\dfrac{\pi}4"),
])
def test_math_equal_true(a, b):
    assert math_equal(a, b) and math_equal(b, a)


@pytest.mark.parametrize("a, b", [("3", "4"), (r"\frac{1}{3}", "0.33"), ("", ""), (None, "1"), (r"\sqrt{2}", "2"),
                                  ("(1,2)", "[1,2]"), ("1/0", "0")])
def test_math_equal_false(a, b):
    assert not math_equal(a, b)


def test_normalize_math_examples():
    assert normalize_math(r" \dfrac12 ") == r"\frac{1}{2}"
    assert normalize_math(".5") == "0.5" and normalize_math("7.00") == "7"
    assert normalize_math(r"\left(3, \frac{\pi}{2}\right)") == r"(3,\frac{\pi}{2})"


def test_math_reward_and_eval():
    solution = r"Adding, we get $\frac{3}{6} = \boxed{\frac{1}{2}}$."
    full = "<reasoning>\nHalf.\n</reasoning>\n<answer>\n\\boxed{\\dfrac12}\n</answer>"
    assert reward("math", full, solution) == {"correctness": 2.0, "format": 1.0, "total": 3.0}
    assert reward("math", "<answer>0.5</answer>", solution) == {"correctness": 2.0, "format": 0.75, "total": 2.75}
    assert reward("math", r"so \boxed{0.4}", r"\frac{1}{2}") == {"correctness": 0.0, "format": 0.5, "total": 0.5}
    assert reward("math", "no idea", "2") == {"correctness": 0.0, "format": 0.25, "total": 0.25}
    assert eval_score("math", r"\boxed{1} ... final \boxed{\frac{1}{2}}", solution) == 1.0  # the LAST box
    assert eval_score("math", r"\boxed{\frac{1}{2}} ... final \boxed{1}", solution) == 0.0
    assert eval_score("math", "<answer>\n$x = \\frac12$\n</answer>", "0.5") == 1.0  # <answer> fallback


# ----------------------------------------------------------------------------- Countdown

@pytest.mark.parametrize("expr, value", [
    ("30+93-100", 23.0), ("2*4-3", 5.0), (" (83 - 75) + 18 ", 26.0), ("8/(3-3/8)", 8 / (3 - 3 / 8)),
    ("-(-3)", 3.0), ("2*3+4", 10.0), ("2*(3+4)", 14.0), ("7/2", 3.5), ("1.5*2", 3.0),
])
def test_countdown_value_valid(expr, value):
    assert countdown_value(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "1/0", "5/(3-3)", "9**9**9**9", "2**3", "7//2", "7%2", "__import__('os').system('x')", "x+1", "abs(-3)",
    "'3'", "1<2", "(1,2)", "()", "", "1 2", "(1)(2)", "1e5", "12345678901+1", "1_000", "0x10", "2+" * 100 + "2",
    "(" * 10000 + "1" + ")" * 10000, "1 if 1 else 2", "[1][0]", "+3",
])
def test_countdown_value_invalid(expr):
    assert countdown_value(expr) is None


def test_countdown_numbers():
    assert countdown_numbers("(30 + 93) - 100") == [30, 93, 100]
    assert countdown_numbers("no numbers") == []
    assert countdown_numbers("1" * 1000 + "+5") == [5]  # absurd digit runs are skipped, never converted


def test_countdown_reward():
    t = ([30, 100, 93], 23)
    fmt = "<reasoning>\n30 + 93 = 123, 123 - 100 = 23\n</reasoning>\n<answer>\n{}\n</answer>".format
    assert reward("countdown", fmt("30 + 93 - 100"), t) == {"correctness": 1.0, "total": 1.0}
    assert reward("countdown", fmt("93 - (100 - 30)"), t)["total"] == 1.0
    assert reward("countdown", fmt("100 - 93 + 16"), t)["total"] == 0.1  # a number not given
    assert reward("countdown", fmt("93 - 100 + 30 - 0"), t)["total"] == 0.1  # an extra number
    assert reward("countdown", fmt("30 + 30 - 100 + 93"), t)["total"] == 0.1  # a number reused
    assert reward("countdown", fmt("30 + 93 + 100"), t)["total"] == 0.1  # wrong value
    assert reward("countdown", fmt("30 ** 93 ** 100"), t)["total"] == 0.1  # d1's eval hung here
    assert reward("countdown", fmt("30 / (100 - 100) + 93"), t)["total"] == 0.1
    assert reward("countdown", fmt("__import__('os').system('30 93 100')"), t)["total"] == 0.1
    assert reward("countdown", fmt("30 + 93 - 100 = 23"), t)["total"] == 0.1  # training asks for no "="
    assert reward("countdown", "30 + 93 - 100", t)["total"] == 0.0  # no answer block
    assert reward("countdown", "<answer>30+93-100", t)["total"] == 0.0
    assert reward("countdown", "<answer>3.0+9.3-1.00</answer>", ([3, 0, 9], 11.3))["total"] == 0.1  # no decimals


@pytest.mark.parametrize("completion, expected", [
    ("<answer>\n\\boxed{30 + 93 - 100}\n</answer>", 1.0),
    ("<answer>\n\\boxed{30 + 93 - 100 = 23}\n</answer>", 1.0),
    ("<answer>\\boxed{(100 \\div 100) \\times 0 + 30 + 93 - 100}</answer>", 0.0),  # wrong numbers
    (r"\boxed{93 - \left(100 - 30\right)}", 1.0),
    ("<answer>\n30+93-100\n</answer>", 1.0),  # no box: the <answer> content
    ("Check: 30 + 93 - 100 = 23. Done.", 1.0),  # no tags: the arithmetic before the first "="
    (r"\boxed{30 \times 93 / 100}", 0.0),
    (r"\boxed{9**9**9**9}", 0.0),
])
def test_countdown_eval(completion, expected):
    assert eval_score("countdown", completion, ([30, 100, 93], 23)) == expected


def test_countdown_expression_latex():
    assert countdown_expression(r"\boxed{(8 \div 2) \times 3 \cdot 1 = 12}") == "(8 / 2) * 3 * 1"


def solve_countdown(numbers, goal):
    """Brute force over 3 numbers with exact fractions, independent of rewards.py."""
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
           "/": lambda x, y: x / y if y else None}
    for a, b, c in permutations(numbers):
        for o1 in ops:
            for o2 in ops:
                ab = ops[o1](Fraction(a), Fraction(b))
                if ab is not None and ops[o2](ab, Fraction(c)) == goal:
                    return f"({a} {o1} {b}) {o2} {c}"
                bc = ops[o2](Fraction(b), Fraction(c))
                if bc is not None and ops[o1](Fraction(a), bc) == goal:
                    return f"{a} {o1} ({b} {o2} {c})"
    return None


@pytest.mark.skipif(not (DATA / "countdown_cd3_test.jsonl").exists(), reason="d1 Countdown test file absent")
def test_countdown_on_d1_test_file():
    rows = [json.loads(line) for line in (DATA / "countdown_cd3_test.jsonl").read_text().splitlines() if line]
    solved = 0
    for row in rows[:64]:
        numbers, goal = [int(n) for n in row["input"].split(",")], int(row["output"])
        expr = solve_countdown(numbers, goal)
        if expr is None:
            continue
        solved += 1
        assert reward("countdown", f"<reasoning>\nok\n</reasoning>\n<answer>\n{expr}\n</answer>",
                      (numbers, goal))["total"] == 1.0, expr
        assert eval_score("countdown", f"<answer>\n\\boxed{{{expr} = {goal}}}\n</answer>", (numbers, goal)) == 1.0
        wrong = f"{expr} + {numbers[0]}"
        assert reward("countdown", f"<answer>{wrong}</answer>", (numbers, goal))["total"] == 0.1
    assert solved > 30


# ----------------------------------------------------------------------------- Sudoku

@pytest.mark.parametrize("text, grid", [
    ("<answer>\n3142243142131324\n</answer>", "3142243142131324"),
    ("<answer>\n3142\n2431\n4213\n1324\n</answer>", "3142243142131324"),
    ("<answer> 3 1 4 2 2 4 3 1 </answer>", "3142243100000000"),  # too short: padded with 0
    ("<answer>31422431421313241234</answer>", "3142243142131324"),  # too long: truncated
    ("<answer>1111111111111111</answer><answer>3142243142131324</answer>", "1111111111111111"),  # the FIRST
    ("no tags, grid 3142243142131324 here", "3142243142131324"),
    ("nothing", "0" * 16),
])
def test_parse_sudoku(text, grid):
    assert parse_sudoku(text) == grid


def test_sudoku_reward_and_eval():
    puzzle, solution = SUDOKU  # blanks at 8 cells: 2, 5, 6, 7, 8, 9, 14, 15 (0-based)
    good = f"<reasoning>\nfill\n</reasoning>\n<answer>\n{solution}\n</answer>"
    assert reward("sudoku", good, SUDOKU) == {"correctness": 1.0, "total": 1.0}
    assert eval_score("sudoku", good, SUDOKU) == 1.0
    assert reward("sudoku", f"<answer>{puzzle}</answer>", SUDOKU)["total"] == 0.0
    one_wrong = solution[:2] + "1" + solution[3:]  # cell 2 is blank in the puzzle
    assert reward("sudoku", f"<answer>{one_wrong}</answer>", SUDOKU)["total"] == pytest.approx(7 / 8)
    given_wrong = "4" + solution[1:]  # cell 0 is given: not scored
    assert reward("sudoku", f"<answer>{given_wrong}</answer>", SUDOKU)["total"] == 1.0
    assert reward("sudoku", f"<answer>[{solution[:8]}, {solution[8:]}]</answer>", SUDOKU)["total"] == 1.0  # digits
    assert reward("sudoku", f"no tags {solution}", SUDOKU)["total"] == 0.0  # training needs the block
    assert eval_score("sudoku", f"no tags {solution}", SUDOKU) == 1.0  # evaluation: a 16-digit run
    assert reward("sudoku", "<answer>31</answer>", SUDOKU)["total"] == 0.0


@pytest.mark.skipif(not (DATA / "4x4_test_sudoku.csv").exists(), reason="d1 Sudoku test file absent")
def test_sudoku_on_d1_test_file():
    with open(DATA / "4x4_test_sudoku.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 500
    for row in rows:
        target = (row["Puzzle"], row["Solution"])
        assert eval_score("sudoku", f"<answer>\n{row['Solution']}\n</answer>", target) == 1.0
        assert reward("sudoku", f"<answer>\n{row['Puzzle']}\n</answer>", target)["total"] == 0.0


# ----------------------------------------------------------------------------- dispatch

def test_dispatch_and_ranges():
    assert TASKS == ("gsm8k", "math", "countdown", "sudoku", "code", "humaneval", "mbpp")
    assert set(REWARD_RANGE) == set(COMPONENT_RANGE) == set(TASKS)
    assert REWARD_RANGE == {"gsm8k": (0.0, 4.0), "math": (0.25, 3.0), "countdown": (0.0, 1.0), "sudoku": (0.0, 1.0),
                            "code": (0.0, 1.1), "humaneval": (0.0, 1.1), "mbpp": (0.0, 1.1)}
    with pytest.raises(ValueError, match="gsm8k, math, countdown, sudoku"):
        reward("chess", "x", None)
    with pytest.raises(ValueError, match="known tasks"):
        eval_score("GSM8K", "x", "1")


def test_score_batch():
    out = score("gsm8k", [GOOD, "nothing"], ["#### 42", "#### 42"])
    assert set(out) == {"correctness", "integer", "strict_format", "soft_format", "xml_count", "total"}
    assert out["total"] == pytest.approx([3.95, 0.0])
    assert score("sudoku", [], []) == {"correctness": [], "total": []}
    with pytest.raises(ValueError):
        score("math", ["a"], [])


# ----------------------------------------------------------------------------- properties

TARGETS = {"gsm8k": "#### -42", "math": r"The answer is $\boxed{\frac{1}{2}}$.", "countdown": ([30, 100, 93], 23),
           "sudoku": SUDOKU, **dict.fromkeys(("code", "humaneval", "mbpp"), {"tests": ["assert f(1) == 2"]})}
ATOMS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "\\boxed{", "\\boxed {", "\\fbox{",
         "{", "}", "\\frac", "\\dfrac12", "\\text{ cm}", "=", "+", "-", "*", "/", "**", "(", ")", ".", ",", "$",
         "%", "42", "-3", "1,000", "2.5", "30", "93", "100", "3142243142131324", "__import__('os')", "é", "∞",
         "😀", "\x00", "\\", "####", "\\left(", "\\div", "\\times"]


def adversarial_strings():
    rng = random.Random(1234)
    texts = ["".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 40))) for _ in range(250)]
    texts += ["".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(0, 200))) for _ in range(100)]
    texts += ["".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(50)).encode("utf-8", "replace").decode()
              for _ in range(20)]
    big = 100_000
    texts += [
        "x" * big, "1" * big, "9**" * (big // 3) + "9", "9**9**9**9", "(" * 10_000, "(" * 10_000 + "1" + ")" * 10_000,
        "\\boxed{" * (big // 7), "{" * (big // 2) + "}" * (big // 2), "}" * big, "\\boxed{" + "{" * big,
        "<answer>" * (big // 8), "</answer>" * (big // 9), "<reasoning>\n" + "\n</reasoning>\n<answer>\n" * 4000,
        "<reasoning>" + "</reasoning><answer>" * 5000, "<reasoning></reasoning>" + " " * big,
        "\\text{" + " " * big, " " * big + "\\text{ cm}", "=" * big, "1=" * (big // 2), "1," * (big // 2),
        "<answer>" + "1+" * (big // 2) + "1</answer>", "\\boxed{" + "1" * big + "}", "####" + "-" * big,
        "__import__('os').system('x')", "<answer>__import__('os').system('x')</answer>",
        "\\frac" * (big // 5), "\\frac{" * (big // 6), "." * big, "\n" * big, "😀" * big,
        "".join(rng.choice(ATOMS) for _ in range(20_000)),
    ]
    return texts


def check_parsers(text):
    assert isinstance(extract_answer(text), str)
    for box in (last_boxed(text), first_boxed(text)):
        assert box is None or isinstance(box, str)
    assert isinstance(normalize_math(text), str)
    assert math_equal(text, text[:50]) in (True, False)
    value = countdown_value(text)
    assert value is None or (isinstance(value, float) and math.isfinite(value))
    assert all(isinstance(n, int) for n in countdown_numbers(text))
    assert isinstance(countdown_expression(text), str)
    assert isinstance(gsm8k_target(text), str)
    grid = parse_sudoku(text)
    assert isinstance(grid, str) and len(grid) == 16


def check_rewards(text):
    for task in TASKS:
        r = reward(task, text, TARGETS[task])
        assert set(r) == {*COMPONENT_RANGE[task], "total"}
        for name, (lo, hi) in COMPONENT_RANGE[task].items():
            assert type(r[name]) is float and lo - 1e-12 <= r[name] <= hi + 1e-12, (task, name, r[name])
        lo, hi = REWARD_RANGE[task]
        assert lo - 1e-12 <= r["total"] <= hi + 1e-12
        assert r["total"] == pytest.approx(sum(v for k, v in r.items() if k != "total"))
        s = eval_score(task, text, TARGETS[task])
        assert type(s) is float and 0.0 <= s <= 1.0


def test_never_raises_in_range_and_bounded_time():
    texts = adversarial_strings()
    start = time.perf_counter()
    slowest = 0.0
    for text in texts:
        t0 = time.perf_counter()
        check_parsers(text)
        check_rewards(text)
        slowest = max(slowest, time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    # 7 rewards + 7 verdicts + every parser per string; linear-time parsing keeps even 100 KB strings fast (the
    # coding tasks run no program here: no string has a fenced block; tests/test_code_task.py covers those).
    assert slowest < 0.5, slowest
    assert elapsed < 5.0, elapsed


def test_gsm8k_targets_on_random_numbers():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.choice([rng.randint(-10**6, 10**6), round(rng.uniform(-1000, 1000), 2)])
        text = f"<reasoning>\nwork\n</reasoning>\n<answer>\n\\boxed{{{n}}}\n</answer>"
        assert eval_score("gsm8k", text, f"some steps\n#### {n}") == 1.0
        assert eval_score("gsm8k", text, f"#### {n + 1}") == 0.0
        plain = f"<reasoning>\nwork\n</reasoning>\n<answer>\n{n:,}\n</answer>"
        assert reward("gsm8k", plain, f"#### {n}")["correctness"] == 2.0
        assert reward("gsm8k", plain, f"#### {n}")["integer"] == (0.5 if isinstance(n, int) else 0.0)


def test_parsed_answer_is_what_the_verdict_reads():
    from rewards import parsed_answer
    assert parsed_answer("gsm8k", "<reasoning>x</reasoning><answer>\\boxed{-3}</answer>") == "-3"
    assert parsed_answer("gsm8k", "no number") == ""
    assert parsed_answer("math", "so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert parsed_answer("countdown", "<answer>\\boxed{3*4-2 = 10}</answer>") == "3*4-2"
    assert parsed_answer("sudoku", "<answer>\n1234 3412\n</answer>") == "12343412" + "0" * 8
