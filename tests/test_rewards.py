"""rewards.py: exact reward components on realistic completions; the evaluation verdicts under both protocols:
d1's (the test vectors of ../shared/docs/d1_eval_protocol.md, and its regexes and Python eval compared with the
linear-time replicas on random text) and the fixed one (every rule, both directions, on realistic completions);
the safe Countdown evaluator, the d1 fixes, and property tests (never raises, stays in range, bounded CPU time) on
random and adversarial strings. Pure Python; the Countdown/Sudoku test files are used when present."""
import csv
import json
import math
import random
import re
import time
import warnings
from fractions import Fraction
from itertools import permutations
from pathlib import Path

import pytest

from rewards import (COMPONENT_RANGE, D1_TASKS, PROTOCOLS, REWARD_RANGE, TASKS, _d1_gsm8k_boxes, countdown_numbers,
                     countdown_value, d1_countdown_value, d1_gsm8k_target, d1_normalize, d1_sudoku_grid, eval_score,
                     eval_scores, extract_answer, gsm8k_target, last_boxed, math_equal, normalize_math, parse_sudoku,
                     parsed_answer, reward, score)
from sandbox import extract_code

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
    assert last_boxed(r"\boxed{3} \boxed{4") == "3"  # training: the unbalanced last one is no answer
    assert last_boxed("no box {here}") is None and last_boxed(r"\boxed{") is None


# ----------------------------------------------------------------------------- realistic completions
# Completions as LLaDA writes them after the "<reasoning>" prefill, decoded WITH special tokens (d1's decoding):
# an answer that ends before the length limit is followed by <|eot_id|> and <|endoftext|> padding.

EOT, EOS = "<|eot_id|>", "<|endoftext|>"
R = "\n</reasoning>\n"  # the doc's R: end of the reasoning


def A(x):
    """The doc's A(x): an answer block."""
    return f"<answer>\n{x}\n</answer>"


def done(text):
    """A finished completion: end of turn, then EOS padding."""
    return text + EOT + EOS * 3


def skip_special(text):
    """The same completion decoded without special tokens."""
    return text.replace(EOT, "").replace(EOS, "")


def both(task, completion, target):
    return eval_score(task, completion, target), eval_score(task, completion, target, "d1")


# ----------------------------------------------------------------------------- d1 protocol: the doc's test vectors

P, S = "1030040220400301", "1234341221434321"  # the doc's Sudoku puzzle (8 blanks) and solution
D1_VECTORS = [  # (id, task, completion, ground truth, what d1 extracted, d1's verdict): d1_eval_protocol.md §3
    ("G1", "gsm8k", r"Half is \boxed{5} apples." + R + A(r"\boxed{7}") + EOT + EOS, 7.0, "5", 0.0),
    ("G2", "gsm8k", R + A(r"\boxed{1,000}") + EOT, 1000.0, "1", 0.0),
    ("G3", "gsm8k", r"Format \boxed{...}" + R + A("It is 6 x 7 =\n\\boxed{\n42\n}") + EOT, 42.0, "42", 1.0),
    ("G4", "gsm8k", A(r"\boxed{\frac{3}{4}}") + EOT, 0.75, "3", 0.0),
    ("G5", "gsm8k", A(r"\boxed{-3}") + EOT, None, "-3", 0.0),
    ("M1", "math", r"Try \boxed{2}." + R + A(r"\boxed{\dfrac{1}{2}}") + EOT, r"\frac{1}{2}", r"\dfrac{1}{2}", 1.0),
    ("M2", "math", R + A("5") + EOT + EOS, "5", R + A("5") + EOT + EOS, 0.0),  # the whole text
    ("M3", "math", A("5") + "\n\\boxed{5", "5", "5", 1.0),
    ("M4", "math", A(r"\boxed{x = .5}") + EOT, r"\frac{1}{2}", "x = .5", 1.0),
    ("M5", "math", A(r"\boxed 5") + EOT, "5", "5\n</answer>" + EOT, 0.0),
    ("M6", "math", A(r"\boxed{y = x/2}") + EOT, "x/2", "y = x/2", 0.0),
    ("M7", "math", A(r"\boxed{10\text{ cm}}") + EOT, "10", r"10\text{ cm}", 1.0),
    ("C1", "countdown", A(r"\boxed{3 \times 5 + 7 = 22}") + EOT, [[3, 5, 7], 22], "3 * 5 + 7", 1.0),
    ("C2", "countdown", "Try 8 + 6 - 2 = 12." + R + A("8 * 6 / 2") + EOT, [[8, 6, 2], 12], "8 + 6 - 2", 1.0),
    ("C3", "countdown", A("8 + 6 - 2") + "\n\\boxed{8 + 6", [[8, 6, 2], 12], "8 + 6 - 2", 1.0),
    ("C4", "countdown", A(r"\boxed{12 = 8 + 6 - 2}") + EOT, [[8, 6, 2], 12], "12", 0.0),
    ("S1", "sudoku", R + A(S) + EOT + EOS, (P, S), S, 1.0),
    ("S2", "sudoku", A("1 2 3 4") + EOT, (P, S), "1234000000000000", 2 / 8),
    ("S3", "sudoku", A(f"[{S}]") + EOT, (P, S), "[123434122143432", 0.0),
    ("S4", "sudoku", f"The grid {P} has 8 blanks." + R + "<answer>\n" + S, (P, S), P, 0.0),
]


@pytest.mark.parametrize("vid, task, completion, gold, extracted, verdict", D1_VECTORS, ids=[v[0] for v in D1_VECTORS])
def test_d1_protocol_vectors(vid, task, completion, gold, extracted, verdict):
    assert parsed_answer(task, completion, "d1") == extracted
    assert eval_score(task, completion, gold, "d1") == pytest.approx(verdict)


def test_d1_gsm8k_ground_truth():
    assert d1_gsm8k_target("48/2 = <<48/2=24>>24 clips\n#### 72") == 72.0
    assert d1_gsm8k_target("#### $1,200.50") == 1200.5
    assert d1_gsm8k_target("He owes 3.\n#### -3") is None  # no minus: negative items are unwinnable in d1
    assert d1_gsm8k_target("72") is None and d1_gsm8k_target(None) is None
    assert eval_score("gsm8k", A(r"\boxed{-3}") + EOT, "#### -3", "d1") == 0.0
    assert eval_score("gsm8k", A(r"\boxed{-3}") + EOT, "#### -3") == 1.0  # fixed: negative answers count


def test_d1_gsm8k_float_quirks():
    d1 = lambda box: parsed_answer("gsm8k", A(rf"\boxed{{{box}}}") + EOT, "d1")  # noqa: E731
    assert [d1(b) for b in ("1e3", "1_000", "$18.00", "5-3", "nan", "...")] == ["1000", "1000", "18", "5", "nan", ""]
    assert parsed_answer("gsm8k", A(r"\boxed {7}") + EOT, "d1") == "7"  # "\boxed {" ignored: the <answer> number
    assert parsed_answer("gsm8k", A(r"\fbox{7} or 9") + EOT, "d1") == "9"  # \fbox ignored: the LAST number


def test_d1_math_normalisation_steps():
    norm = d1_normalize
    assert norm("\\dfrac{1}{2}") == norm("\\tfrac12") == norm("1/2") == norm("0.5") == norm(".5") == r"\frac{1}{2}"
    assert norm(r"90^\circ") == "90" and norm(r"\$5") == "5" and norm("$5") == "$5"  # a bare $ stays
    assert norm(r"10\%") == "10" and norm("10%") == "10%" and norm(r"\left(1,2\right)") == "(1,2)"
    assert norm(r"\leftarrow") == "arrow"  # d1 deletes "\left" inside other commands too
    assert norm("x = 3") == "3" and norm("ab = 3") == "ab=3"  # a left part of <= 2 characters, spaces count
    assert norm(r"\sqrt2") == r"\sqrt{2}" and norm(r"\frac1{2}") == r"\frac{1}{2}" and norm(r"\frac1") == r"\frac1"
    assert norm("5.0") == "5.0" and norm("1,000") == "1,000" and norm("-1/2") == r"\frac{-1}{2}"  # no numeric equivalence
    for bad in (r"\sqrt", r"1\text{ m}\text{ s}", r"\frac", r"\frac\frac12", "x/2", "/5"):
        with pytest.raises(ValueError):
            norm(bad)


@pytest.mark.parametrize("pred, gold, verdict", [
    ("5.0", "5", 0.0), ("1,000", "1000", 0.0), ("10%", "10", 0.0), (r"\text{(B)}", "B", 0.0),
    ("-1/2", r"-\frac{1}{2}", 0.0), (r"\frac{1}{2}", "1/2", 1.0), (r"90^\circ", "90", 1.0),
    (r"\sqrt", r"\sqrt", 1.0),  # both raise: raw strings compared
])
def test_d1_math_no_numeric_equivalence(pred, gold, verdict):
    assert eval_score("math", A(rf"\boxed{{{pred}}}") + EOT, gold, "d1") == verdict


def test_d1_math_locating():
    # "\boxed " (with a space) anywhere beats every later "\boxed{}", and runs to the first "$"
    assert parsed_answer("math", r"so \boxed 7$ and then \boxed{8}", "d1") == "7"
    assert parsed_answer("math", r"\boxed{\frac{1}{\sqrt{2}}} is it", "d1") == r"\frac{1}{\sqrt{2}}"  # nesting
    assert parsed_answer("math", r"\fbox{7}", "d1") == r"\fbox{7}"  # located, never unwrapped
    assert eval_score("math", r"\boxed{} " + A("7"), "7", "d1") == 1.0  # an empty box: the <answer> fallback


def test_d1_countdown_python_arithmetic():
    t = lambda nums, goal: [nums, goal]  # noqa: E731
    assert eval_score("countdown", A(r"\boxed{3**2*1}"), t([3, 2, 1], 9), "d1") == 1.0  # ** passes in d1
    assert eval_score("countdown", A(r"\boxed{7 // 2 + 3}"), t([7, 2, 3], 6), "d1") == 1.0  # // too
    assert eval_score("countdown", A(r"\boxed{-3 + 2 * 6}"), t([3, 2, 6], 9), "d1") == 1.0  # unary minus too
    assert eval_score("countdown", A(r"\boxed{1.5 * 2}"), t([1, 5, 2], 3), "d1") == 1.0  # "1.5" counts as 1 and 5
    assert eval_score("countdown", A(r"\boxed{08 + 4}"), t([8, 4], 12), "d1") == 0.0  # SyntaxError -> inf
    assert eval_score("countdown", A(r"\boxed{8 / (4 - 4)}"), t([8, 4, 4], 0), "d1") == 0.0  # ZeroDivisionError
    assert eval_score("countdown", A(r"\boxed{\frac{8}{2} + 6}"), t([8, 2, 6], 10), "d1") == 0.0  # \frac stays
    for fixed in ("3**2*1", "7 // 2 + 3", "-3 + 2 * 6", "1.5 * 2"):  # all four are wrong under the fixed protocol
        nums = [int(n) for n in re.findall(r"\d+", fixed)]
        goal = {"3**2*1": 9, "7 // 2 + 3": 6, "-3 + 2 * 6": 9, "1.5 * 2": 3}[fixed]
        assert eval_score("countdown", A(rf"\boxed{{{fixed}}}"), t(nums, goal)) == 0.0


def test_d1_countdown_power_tower_is_bounded():
    # d1's eval of 9**9**9 computes a 370-million-digit integer; the replica refuses integers past
    # D1_MAX_INT_BITS and counts the item wrong, in well under a second of CPU time
    start = time.process_time()
    for expr, nums in [("9**9**9", [9, 9, 9]), ("99**99**99", [99, 99, 99]), ("(9**9)**9**9", [9, 9, 9, 9]),
                       ("7 // 9**9**9", [7, 9, 9, 9])]:
        assert d1_countdown_value(expr) == math.inf
        assert eval_score("countdown", A(rf"\boxed{{{expr}}}"), [nums, 0], "d1") == 0.0
    assert time.process_time() - start < 2.0
    assert d1_countdown_value("100**(99*98)") == 100 ** (99 * 98)  # the largest 3-number power under 100 is exact
    assert d1_countdown_value("1**9**9") == 1 and d1_countdown_value("2**-1") == 0.5


def random_arithmetic(rng):
    """A random string over d1's Countdown alphabet (digits, + - * / ( ) . and whitespace), never with "**"
    (a random power tower could run for hours): half of them well-formed expressions, half free-form."""
    numbers = ["1", "2", "7", "30", "100", "0", "08", "5.", ".5", "0.0", "-3", "- -2", "(4)"]
    if rng.random() < 0.5:
        text = rng.choice(numbers)
        for _ in range(rng.randint(0, 3)):
            text = rng.choice(["{} {} {}", "({}{}{})", "{}{}{}"]).format(text, rng.choice(["+", "-", "*", "/", "//"]),
                                                                      rng.choice(numbers))
        return rng.choice(["", " ", "\t", "\n"]) + text
    atoms = ["1", "2", "7", "08", "30", "100", "0", ".", "5.", ".5", "+", "-", "*", "/", "//", "(", ")", " ", "\t",
             "\n", "-(", "((", "))", "0.0"]
    while "**" in (text := "".join(rng.choice(atoms) for _ in range(rng.randint(1, 12)))):
        pass
    return text


def python_eval(text):
    """What d1 did, for the comparison only: eval() of a test-generated arithmetic string (digits and operators,
    no names, no "**"), with d1's +inf on any error. Model text is never given to eval."""
    assert re.fullmatch(r"[0-9+\-*/(). \t\n]+", text) and "**" not in text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # "2(3)": 'int' object is not callable
            value = eval(text, {"__builtins__": None}, {})  # noqa: S307
    except (SyntaxError, ArithmeticError, TypeError, RecursionError, MemoryError):
        return math.inf
    # "..." alone evaluates to Ellipsis; it holds no digit, so d1's number check rejects it before any eval
    return value if isinstance(value, (int, float)) else math.inf


def test_d1_countdown_value_equals_python_eval():
    rng = random.Random(3)
    texts = [random_arithmetic(rng) for _ in range(4000)]
    texts += [" 1+2", "\t1+2", "\n1+2", "1+\n2", "(1+\n2)", "2(3)", "...", "1..2", "1 0+1", "-" * 999 + "1",
              "(" * 199 + "1" + ")" * 199, "(" * 201 + "1" + ")" * 201, "7/0", "7//0.0", "10/4", "-7//2", "0.1+0.2"]
    finite = 0
    for text in texts:
        mine, want = d1_countdown_value(text), python_eval(text)
        assert type(mine) is type(want) and (mine == want or (mine != mine and want != want)), repr(text)
        finite += want != math.inf
    assert 500 < finite < len(texts) - 500  # both outcomes well covered


def test_d1_countdown_equation_regex():
    # The linear search equals re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", text).group(1).strip() on random text
    pattern = re.compile(r"([0-9+\-*/() ]+)=[0-9. ]+")
    rng = random.Random(5)
    atoms = ["8", " ", "+", "=", "=", ".", "x", "(", "*", "\n", "12", "-", "=5", "a=", " = "]
    hits = 0
    for _ in range(3000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 14)))
        m = pattern.search(text)
        got = parsed_answer("countdown", r"\boxed{" + text.replace("}", "") + "}", "d1")
        assert got == (m.group(1).strip() if m else text), repr(text)
        hits += m is not None
    assert 300 < hits < 2700


def test_d1_gsm8k_boxes_equal_the_regex():
    pattern = re.compile(r"\\boxed{(.*?)}")  # d1's, no DOTALL
    rng = random.Random(6)
    atoms = [r"\boxed{", r"\boxed{", "}", "}", "\n", "4", "2", " ", "{", r"\boxed {", "..."]
    for _ in range(3000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 12)))
        assert _d1_gsm8k_boxes(text) == pattern.findall(text), repr(text)


def test_d1_sudoku_patterns_equal_the_regexes():
    eot, eos = re.escape(EOT), re.escape(EOS)
    patterns = [re.compile(r"<answer>.*?```\s*([\d\s]+)```", re.DOTALL),
                re.compile(rf"<answer>(.*?)(?:{eot}|{eos}|</answer>)", re.DOTALL),
                re.compile(rf"</answer>\s*(.*?)(?:{eot}|{eos}|$)", re.DOTALL),
                re.compile(r".*?(\d{16})\s*</answer>", re.DOTALL),
                re.compile(r"\b(\d{16})\b")]

    def reference(text):  # d1's rule: the first pattern whose group, stripped, is not blank
        for pattern in patterns:
            m = pattern.search(text)
            if m and m.group(1).strip():
                return "".join(m.group(1).split())[:16].ljust(16, "0")
        return ""

    rng = random.Random(7)
    atoms = ["<answer>", "</answer>", "```", "`", "\n", " ", S, S[:8], "1234", "x", EOT, EOS, "[", "٣"]
    found = 0
    for _ in range(4000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 10)))
        assert d1_sudoku_grid(text) == reference(text), repr(text)
        found += reference(text) != ""
    assert 1000 < found < 3900


# ----------------------------------------------------------------------------- fixed protocol, every rule both ways
# Each case: (completion, target, fixed verdict, d1 verdict). Item classes of issue #14: fair fixes kept from the
# project's parser, too-generous rules tightened, too-strict rules loosened.

GSM8K_CASES = {
    # fair fixes
    "comma-grouped": (done(R + A(r"\boxed{43,500}")), "#### 43500", 1.0, 0.0),
    "thin-space group": (done(R + A(r"\boxed{43\,500}")), "#### 43500", 1.0, 0.0),
    "escaped dollar": (done(R + A(r"\boxed{\$18}")), "#### 18", 1.0, 1.0),  # d1 too: its first number
    "escaped dollar, grouped": (done(R + A(r"\boxed{\$1,800}")), "#### 1800", 1.0, 0.0),
    "unclosed box at the end": (R + "<answer>\n\\boxed{72", "#### 72", 1.0, 0.0),
    "unclosed answer at the end": (R + "<answer>\nShe pays 72", "#### 72", 1.0, 0.0),
    "newline inside the box": (done(R + A("\\boxed{\n72\n}")), "#### 72", 1.0, 1.0),
    "a/b in the box": (done(R + A(r"\boxed{45/3}")), "#### 15", 1.0, 0.0),
    "frac in the box": (done(R + A(r"\boxed{\frac{5}{2}}")), "#### 2.5", 1.0, 0.0),
    "negative answer": (done(R + A(r"\boxed{-3}")), "He is 3 short.\n#### -3", 1.0, 0.0),
    "box in the reasoning, answer differs": (done(r"Half is \boxed{5}." + R + A(r"\boxed{7}")), "#### 7", 1.0, 0.0),
    "box in the reasoning, answer differs (other way)": (
        done(r"Half is \boxed{5}." + R + A(r"\boxed{7}")), "#### 5", 0.0, 1.0),
    "plain number in <answer>": (done(R + A("72")), "#### 72", 1.0, 1.0),
    "last number of <answer>": (done(R + A("12 + 60 = 72")), "#### 72", 1.0, 1.0),
    "equation in the box": (done(R + A(r"\boxed{6 \times 12 = 72}")), "#### 72", 1.0, 0.0),  # d1: its first number
    "unit in the box": (done(R + A(r"\boxed{72 \text{ apples}}")), "#### 72", 1.0, 1.0),
    # too generous, tightened: no <answer> and no box is no answer, whatever numbers the text holds
    "stops inside its reasoning": ("First, 12 apples. Then 60 more, so 72", "#### 72", 0.0, 0.0),
    "degenerate repeated tags": (done(R + "So 72.\n</reasoning>\n</reasoning>\n</reasoning>"), "#### 72", 0.0, 0.0),
    "no <answer>, last box": (done(r"So the total is \boxed{72}."), "#### 72", 1.0, 1.0),
    "no <answer>, earlier box ignored": (done(r"First \boxed{12}, then \boxed{72}."), "#### 12", 0.0, 1.0),
    # hedges: several boxes in the final answer must all be right
    "hedged boxes": (done(R + A(r"\boxed{72} or \boxed{70}")), "#### 72", 0.0, 1.0),
    "repeated identical boxes": (done(R + A(r"\boxed{72} so \boxed{72.00}")), "#### 72", 1.0, 1.0),
    "junk after the end of turn": (R + A(r"\boxed{72}") + EOT + EOS + r"\boxed{9}", "#### 72", 1.0, 1.0),
}

MATH_CASES = {
    "answer without a box": (done(R + A(r"\frac{1}{2}")), r"\frac{1}{2}", 1.0, 0.0),
    "box in <answer>": (done(R + A(r"\boxed{\dfrac{1}{2}}")), r"We get $\boxed{\frac{1}{2}}$.", 1.0, 1.0),
    "unit on the reference": (done(R + A(r"\boxed{15}")), r"15\mbox{ cm}^2", 1.0, 0.0),
    "unclosed box at the end": (R + "<answer>\n" + r"\boxed{\frac{1}{2}", r"\frac{1}{2}", 1.0, 0.0),
    "comma-grouped": (done(R + A(r"\boxed{1,000}")), "1000", 1.0, 0.0),
    "5.0 for 5": (done(R + A(r"\boxed{5.0}")), "5", 1.0, 0.0),
    # the fraction policy: a fraction reference needs that fraction, in lowest terms
    "decimal for a fraction": (done(R + A(r"\boxed{0.5}")), r"\frac{1}{2}", 0.0, 1.0),
    "unreduced fraction": (done(R + A(r"\boxed{\frac{2}{4}}")), r"\frac{1}{2}", 0.0, 0.0),
    "a/b for a fraction": (done(R + A(r"\boxed{1/2}")), r"\frac{1}{2}", 1.0, 1.0),
    "sign placement": (done(R + A(r"\boxed{\frac{-1}{2}}")), r"-\frac{1}{2}", 1.0, 0.0),
    "fraction for a decimal": (done(R + A(r"\boxed{\frac{1}{4}}")), "0.25", 0.0, 0.0),
    "fraction for an integer": (done(R + A(r"\boxed{\frac{10}{2}}")), "5", 0.0, 0.0),
    # an answer the model gave as its answer, and only that
    "no <answer>, no box": (done("The answer is 5."), "5", 0.0, 0.0),
    "no <answer>, last box": (done(r"So \boxed{1} ... finally \boxed{\frac12}"), r"\frac{1}{2}", 1.0, 1.0),
    "hedged boxes": (done(R + A(r"\boxed{2} or \boxed{3}")), "3", 0.0, 1.0),
}

CD = [[30, 100, 93], 23]
COUNTDOWN_CASES = {
    "boxed in <answer>": (done(R + A(r"\boxed{93 - (100 - 30)}")), CD, 1.0, 1.0),
    "LaTeX operators": (done(R + A(r"\boxed{(100 \div 100) \times 30}")), [[100, 100, 30], 30], 1.0, 1.0),
    "unclosed box inside <answer>": (done(R + "<answer>\n\\boxed{30 + 93 - 100\n</answer>"), CD, 1.0, 0.0),
    "target = expression": (done(R + A(r"\boxed{23 = 30 + 93 - 100}")), CD, 1.0, 0.0),
    "expression = target": (done(R + A(r"\boxed{30 + 93 - 100 = 23}")), CD, 1.0, 1.0),
    "\\frac": (done(R + A(r"\boxed{\frac{100}{4} + 2}")), [[100, 4, 2], 27], 1.0, 0.0),
    "<answer> without a box": (done(R + A("30 + 93 - 100")), CD, 1.0, 0.0),  # d1: the whole text
    # too generous, tightened
    "equation in the reasoning only": (done("Try 30 + 93 - 100 = 23." + R + A("30 * 93 / 100")), CD, 0.0, 1.0),
    "hedge, right one last": (done(R + A(r"\boxed{30 * 93 / 100} or \boxed{30 + 93 - 100}")), CD, 0.0, 1.0),
    "hedge, right one first": (done(R + A(r"\boxed{30 + 93 - 100} or \boxed{30 * 93 / 100}")), CD, 0.0, 0.0),
    "the same answer twice": (done(R + A(r"\boxed{30 + 93 - 100} = \boxed{30+93-100}")), CD, 1.0, 1.0),
    "power": (done(R + A(r"\boxed{3**2*1}")), [[3, 2, 1], 9], 0.0, 1.0),
    "floor division": (done(R + A(r"\boxed{7 // 2 + 3}")), [[7, 2, 3], 6], 0.0, 1.0),
    "unary minus": (done(R + A(r"\boxed{-30 + 100 - 93 + 46}")), [[30, 100, 93, 46], 23], 0.0, 1.0),
    "glued decimal": (done(R + A(r"\boxed{9.3 * 10 - 70}")), [[9, 3, 10, 70], 23], 0.0, 1.0),
    "wrong numbers": (done(R + A(r"\boxed{30 + 93 - 100 + 0}")), CD, 0.0, 0.0),
}

PS = ("3102200002100320", "3142243142131324")  # SUDOKU: 8 blanks
SUDOKU_CASES = {
    "closed block": (done(R + A(PS[1])), PS, 1.0, 1.0),
    "unclosed <answer>": (done(R + "<answer>\n" + PS[1]), PS, 1.0, 1.0),  # d1 stops at the EOT
    "cut off in <answer>, puzzle in the reasoning": (f"The puzzle {PS[0]} has 8 blanks." + R + "<answer>\n" + PS[1],
                                                     PS, 1.0, 0.0),
    "grid after </answer>": (done(R + "<answer>\n</answer>\n" + PS[1]), PS, 1.0, 1.0),
    "rows with brackets": (done(R + A("[3,1,4,2],\n[2,4,3,1],\n[4,2,1,3],\n[1,3,2,4]")), PS, 1.0, 1 / 8),
    "grid in a code fence": (done(R + A(f"```\n{PS[1]}\n```")), PS, 1.0, 1.0),
    "no tags, solution in the text": (done(f"The solved grid is {PS[1]}."), PS, 0.0, 1.0),
    "no tags, puzzle restated": (done(f"Solve {PS[0]}: first row 3 1 4 2"), PS, 0.0, 0.0),
    "the last block counts": (done(R + A(PS[0]) + "\nWait, fixing it.\n" + A(PS[1])), PS, 1.0, 0.0),
}


@pytest.mark.parametrize("task, case", [(t, c) for t, cases in [("gsm8k", GSM8K_CASES), ("math", MATH_CASES),
                                         ("countdown", COUNTDOWN_CASES), ("sudoku", SUDOKU_CASES)] for c in cases])
def test_fixed_protocol_rules(task, case):
    completion, target, fixed, d1 = {"gsm8k": GSM8K_CASES, "math": MATH_CASES, "countdown": COUNTDOWN_CASES,
                                     "sudoku": SUDOKU_CASES}[task][case]
    target = tuple(target) if task == "sudoku" else target
    assert both(task, completion, target) == (fixed, d1)
    # the fixed verdict stops at the end of the turn: decoding without special tokens gives the same verdict
    # (unless the model wrote more after its turn ended, which that decoding glues on)
    if not completion.partition(EOT)[2].replace(EOS, ""):
        assert eval_score(task, skip_special(completion), target) == fixed


def test_fixed_protocol_parsed_answers():
    assert parsed_answer("gsm8k", done(R + A(r"\boxed{72} or \boxed{70}"))) == "72 | 70"
    assert parsed_answer("gsm8k", "no answer 42") == ""
    assert parsed_answer("gsm8k", done(R + A(r"\boxed{-3}"))) == "-3"
    assert parsed_answer("math", done(R + A(r"so \boxed{\frac{1}{2}} done"))) == r"\frac{1}{2}"
    assert parsed_answer("countdown", done(A(r"\boxed{3 \times 4 - 2 = 10}"))) == "3 * 4 - 2"
    assert parsed_answer("sudoku", done(A("1234 3412"))) == "12343412" + "0" * 8
    assert parsed_answer("sudoku", "nothing") == "0" * 16


def test_training_reward_is_not_the_evaluation_verdict():
    """The training rewards keep d1's training rules (rewards.py docstring); the verdicts differ on purpose."""
    half = r"We get $\boxed{\frac{1}{2}}$."
    assert reward("math", "<answer>0.5</answer>", half)["correctness"] == 2.0  # training: values compare
    assert eval_score("math", "<answer>0.5</answer>", half) == 0.0  # fixed verdict: the fraction policy
    # both refuse unary minus (tasks.md: + - * / and parentheses on the given numbers); d1's eval() took it
    assert reward("countdown", done(A("-30 + 100 - 93 + 46")), [[30, 100, 93, 46], 23])["total"] == 0.1
    assert eval_score("countdown", done(A("-30 + 100 - 93 + 46")), [[30, 100, 93, 46], 23]) == 0.0
    unclosed = R + "<answer>\n" + PS[1]
    assert reward("sudoku", unclosed, PS)["total"] == 0.0 and eval_score("sudoku", unclosed, PS) == 1.0


def test_protocol_argument():
    assert PROTOCOLS == ("fixed", "d1") and D1_TASKS == ("gsm8k", "math", "countdown", "sudoku")
    with pytest.raises(ValueError, match="no scorer"):
        eval_score("humaneval", "x", {"tests": ["assert True"]}, "d1")
    with pytest.raises(ValueError, match="unknown protocol"):
        eval_score("gsm8k", "x", "#### 1", "paper")
    assert eval_scores("gsm8k", [done(A(r"\boxed{-3}"))] * 2, ["#### -3"] * 2, protocol="d1") == [0.0, 0.0]


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


@pytest.mark.parametrize("pred, target, same", [
    (r"\frac{1}{2}", "0.5", False), ("0.5", r"\frac{1}{2}", False), (r"\frac{2}{4}", r"\frac{1}{2}", False),
    (r"\dfrac12", "1/2", True), (r"\frac{-3}{4}", r"-\frac{3}{4}", True), (r"-\frac{3}{4}", r"\frac{3}{-4}", True),
    (r"\frac{5}{1}", "5", False), ("5", r"\frac{5}{1}", False), ("5.0", "5", True), ("1,000", "1000", True),
    (r"\frac{\pi}{4}", r"\dfrac{\pi}4", True), (r"\frac{0}{5}", "0", False), (r"\frac{1}{3}", "0.3333333333", False),
])
def test_math_equal_fraction_form(pred, target, same):
    assert math_equal(pred, target, fraction_form=True) == same
    assert math_equal(pred, target)  # without the form rule (training) these are all value-equal


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
    assert reward("math", r"\boxed{1} ... final \boxed{\frac{1}{2}}", solution)["correctness"] == 2.0  # LAST box
    assert eval_score("math", r"\boxed{1} ... final \boxed{\frac{1}{2}}", solution) == 1.0
    assert eval_score("math", r"\boxed{\frac{1}{2}} ... final \boxed{1}", solution) == 0.0
    assert eval_score("math", "<answer>\n$x = \\frac12$\n</answer>", solution) == 1.0  # <answer> fallback


# ----------------------------------------------------------------------------- Countdown

@pytest.mark.parametrize("expr, value", [
    ("30+93-100", 23.0), ("2*4-3", 5.0), (" (83 - 75) + 18 ", 26.0), ("8/(3-3/8)", 8 / (3 - 3 / 8)),
    ("2*3+4", 10.0), ("2*(3+4)", 14.0), ("7/2", 3.5), ("1.5*2", 3.0),
])
def test_countdown_value_valid(expr, value):
    assert countdown_value(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "-(-3)", "1/0", "5/(3-3)", "9**9**9**9", "2**3", "7//2", "7%2", "__import__('os').system('x')", "x+1", "abs(-3)",
    "'3'", "1<2", "(1,2)", "()", "", "1 2", "(1)(2)", "1e5", "12345678901+1", "1_000", "0x10", "2+" * 100 + "2",
    "(" * 10000 + "1" + ")" * 10000, "1 if 1 else 2", "[1][0]", "+3",
])
def test_countdown_value_invalid(expr):
    assert countdown_value(expr) is None


def test_countdown_value_without_unary_minus():
    assert countdown_value("-3 + 5") is None and countdown_value("(3 + 5)") == 8.0
    assert countdown_value("5 - 3") == 2.0
    # the training reward follows tasks.md's rule (+ - * / and parentheses on the given numbers), as the verdict
    assert reward("countdown", "<answer>-3 + 5 + 7</answer>", ([3, 5, 7], 9))["correctness"] == 0.1


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
    ("Check: 30 + 93 - 100 = 23. Done.", 0.0),  # no box, no <answer>: no answer given
    (r"\boxed{30 \times 93 / 100}", 0.0),
    (r"\boxed{9**9**9**9}", 0.0),
])
def test_countdown_eval(completion, expected):
    assert eval_score("countdown", completion, ([30, 100, 93], 23)) == expected


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
        boxed = f"<answer>\n\\boxed{{{expr} = {goal}}}\n</answer>" + EOT
        assert both("countdown", boxed, (numbers, goal)) == (1.0, 1.0)
        wrong = f"{expr} + {numbers[0]}"
        assert reward("countdown", f"<answer>{wrong}</answer>", (numbers, goal))["total"] == 0.1
        assert both("countdown", f"<answer>\\boxed{{{wrong}}}</answer>", (numbers, goal)) == (0.0, 0.0)
    assert solved > 30


# ----------------------------------------------------------------------------- Sudoku

@pytest.mark.parametrize("text, grid", [
    ("<answer>\n3142243142131324\n</answer>", "3142243142131324"),
    ("<answer>\n3142\n2431\n4213\n1324\n</answer>", "3142243142131324"),
    ("<answer> 3 1 4 2 2 4 3 1 </answer>", "3142243100000000"),  # too short: padded with 0
    ("<answer>31422431421313241234</answer>", "3142243142131324"),  # too long: truncated
    ("<answer>1111111111111111</answer><answer>3142243142131324</answer>", "3142243142131324"),  # the LAST
    ("<answer>3142243142131324</answer><answer>\n</answer>", "3142243142131324"),  # the last holding digits
    ("no tags, grid 3142243142131324 here", "0" * 16),  # never a run outside the answer
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
    assert eval_score("sudoku", f"no tags {solution}", SUDOKU) == 0.0  # and so does the fixed verdict
    assert reward("sudoku", "<answer>31</answer>", SUDOKU)["total"] == 0.0


@pytest.mark.skipif(not (DATA / "4x4_test_sudoku.csv").exists(), reason="d1 Sudoku test file absent")
def test_sudoku_on_d1_test_file():
    with open(DATA / "4x4_test_sudoku.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 500
    for row in rows:
        target = (row["Puzzle"], row["Solution"])
        assert both("sudoku", done(R + A(row["Solution"])), target) == (1.0, 1.0)
        assert reward("sudoku", f"<answer>\n{row['Puzzle']}\n</answer>", target)["total"] == 0.0
        assert both("sudoku", done(R + A(row["Puzzle"])), target) == (0.0, 0.0)


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
         "😀", "\x00", "\\", "####", "\\left(", "\\div", "\\times", "\\boxed ", EOT, EOS, "\\sqrt"]


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
        # d1's patterns at their worst: fences, boxes cut by newlines, 16-digit runs, a power tower in a box
        "<answer>" + "```" * (big // 3), "```1" * (big // 4), "</answer>" + " " * big, ("1" * 16 + " ") * 5000,
        ("\\boxed{" + "x" * 10 + "\n") * 5000, "\\boxed " * (big // 7), "{" * big + "\\boxed" + "}" * big,
        "-" * big + "30+93-100", "<answer>\\boxed{30**93**100}</answer>", "\\boxed{100**(93*30)}",
        "\\boxed{" + "-" * 5000 + "30+93-100}", "\\text{ " * (big // 7), "\\sqrt" * (big // 5), "/" * big,
    ]
    return texts


def check_parsers(text):
    assert isinstance(extract_answer(text), str)
    box = last_boxed(text)
    assert box is None or isinstance(box, str)
    assert isinstance(normalize_math(text), str)
    assert math_equal(text, text[:50]) in (True, False) and math_equal(text, "1/2", fraction_form=True) in (True, False)
    value = countdown_value(text)
    assert value is None or (isinstance(value, float) and math.isfinite(value))
    assert all(isinstance(n, int) for n in countdown_numbers(text))
    assert isinstance(gsm8k_target(text), str)
    for task in D1_TASKS:
        for protocol in PROTOCOLS:
            assert isinstance(parsed_answer(task, text, protocol), str)
    assert len(parse_sudoku(text)) == 16 and len(d1_sudoku_grid(text)) in (0, 16)
    try:
        d1_normalize(text)
    except ValueError:
        pass  # d1's normaliser raises on some strings (its verdict then compares raw strings)
    assert d1_countdown_value(text) is not None


def check_rewards(text):
    for task in TASKS:
        r = reward(task, text, TARGETS[task])
        assert set(r) == {*COMPONENT_RANGE[task], "total"}
        for name, (lo, hi) in COMPONENT_RANGE[task].items():
            assert type(r[name]) is float and lo - 1e-12 <= r[name] <= hi + 1e-12, (task, name, r[name])
        lo, hi = REWARD_RANGE[task]
        assert lo - 1e-12 <= r["total"] <= hi + 1e-12
        assert r["total"] == pytest.approx(sum(v for k, v in r.items() if k != "total"))
        for protocol in PROTOCOLS if task in D1_TASKS else ("fixed",):
            s = eval_score(task, text, TARGETS[task], protocol)
            assert type(s) is float and 0.0 <= s <= 1.0


def test_never_raises_in_range_and_bounded_time():
    texts = adversarial_strings()
    assert not any(map(extract_code, texts))  # the coding verdicts below run no program (no sandbox processes)
    start = time.process_time()  # CPU time of this process: other load on the machine does not count
    slowest = 0.0
    for text in texts:
        t0 = time.process_time()
        check_parsers(text)
        check_rewards(text)
        slowest = max(slowest, time.process_time() - t0)
    elapsed = time.process_time() - start
    # 7 rewards + 11 verdicts + every parser per string; linear-time parsing keeps even 100 KB strings fast (the
    # coding tasks run no program here; tests/test_code_task.py covers those).
    # The bounds are ~10x what the suite measures: they catch quadratic (or worse) parsing, not slow machines.
    assert slowest < 2.0, slowest
    assert elapsed < 30.0, elapsed


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
        assert eval_score("gsm8k", plain, f"#### {n}") == 1.0
