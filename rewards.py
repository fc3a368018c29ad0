r"""Answer parsers, RL rewards and evaluation verdicts for d1's tasks: GSM8K, MATH, Countdown, 4x4 Sudoku, and
the coding tasks: KodCode training ("code"), HumanEval and MBPP evaluation.

Pure standard-library Python (no torch), two entry points:

* ``reward(task, completion, target)``: the training reward of one completion as named components plus
  ``"total"``; ``score(task, completions, targets)`` is the batched form the RL loop calls.
* ``eval_score(task, completion, target, protocol="fixed")``: the evaluation verdict in [0, 1] (fraction of blank
  cells for Sudoku, pass@1 for coding); ``eval_scores`` is the batched form.

Training rewards and evaluation verdicts read completions differently, on purpose:
  * Training rewards keep d1's TRAINING rules (d1's reward functions, with the fixes below), because the method
    we reproduce learns from exactly that signal: they read the last closed <answer>...</answer> block and pay
    for the format (GSM8K's format, integer and xml-count terms, MATH's format term). GSM8K compares the
    <answer> text itself; MATH takes the last \boxed{} anywhere, else the <answer> text, and compares values
    (0.5 == \frac{1}{2}); Countdown needs a closed block without "=" and uses + - * / and parentheses on the
    given numbers only (d1's training reward ran Python's eval: "**", "//" and unary minus passed, and a power
    tower hung training; tasks.md's rule, the same as the fixed verdict's); Sudoku reads the digits of the last
    closed block.
  * Evaluation verdicts judge the answer the model GAVE AS ITS ANSWER, and nothing else: no format credit, no
    number fished out of the reasoning, no credit for hedging. Two protocols:
    - protocol="d1" replicates d1's public evaluation scorer (eval/parse_and_get_acc.py @837888f, described in
      ../shared/docs/d1_eval_protocol.md) item for item, its bugs included, so numbers can sit next to the
      paper's. It reads the completion decoded WITH special tokens (<|eot_id|>, <|endoftext|>), as d1 did.
    - protocol="fixed" (the default) keeps d1's fair intent and corrects it, in both directions (list below).
  * Coding (code, humaneval, mbpp) has one verdict, sandbox.pass_at_1 (d1 published no coding scorer).

The "fixed" protocol, rule by rule (every difference from d1 is listed):
  all        The completion ends at the first <|eot_id|> or <|endoftext|> (d1 reads on into the padding), so
             both decodings give the same verdict. The final answer is the last non-blank <answer> block,
             closed or left open at the end of the completion. Inside it, EVERY box counts: several boxes
             that are not all correct score 0 (a hedge; d1 takes one box, the first or the last). A box left
             unclosed at the end (one line) still counts (d1 drops it). Without any <answer>, only the last
             box of the text counts; without a box either, there is no answer (score 0).
  gsm8k      d1 takes the FIRST box anywhere (even a draft in the reasoning), else the first <answer> block;
             fixed reads the final answer as above. A box's number is brace-matched ("\frac{2}{3}", "45/3" and
             boxes spanning lines parse; d1 stops at the first "}" and skips boxes with a newline); "1,000",
             "43\,500", "\$1,800" are numbers (d1: 1,000 -> 1); a block without a box gives its number, else its
             last number (as d1). Negative answers can be right (d1's ground-truth regex drops the minus, so they
             never score). Equality within 1e-9 relative (d1: exact float equality).
  math       Hendrycks-style normalisation (normalize_math) plus numeric equality, EXCEPT across forms: when
             the reference is a fraction (\frac{a}{b}, a/b) the answer must be that fraction in lowest terms
             (a decimal such as 0.5, or 2/4, scores 0), and a fraction never matches a decimal or integer
             reference (a fraction reference stands for a question asking for a common fraction, which the
             verdict cannot see; value equality across forms is what the training reward keeps). An <answer>
             block without a box is the answer (d1 compares the whole completion instead). Units after a
             number ("15\mbox{ cm}^2") are dropped; no normalisation step raises (d1 falls back to raw strings).
  countdown  The boxed (or <answer>) expression with \times \cdot \div \frac mapped; "expr = 12" and
             "12 = expr" give expr; + - * / and parentheses on the given numbers only (no "**", "//", unary
             minus or decimal points; d1 evaluates Python and accepts all of them). d1 scores the FIRST
             equation of the reasoning when nothing is boxed; fixed needs a box or an <answer> block.
  sudoku     The digits only (as the training reward) of the last <answer> block holding a digit, closed or
             not, else of the text after the last </answer>; first 16, padded with '0'. Never a 16-digit run
             elsewhere (d1 falls back to the first standalone one, usually the puzzle restated in the
             reasoning), and brackets or commas do not shift cells (they do in d1).

Where the "d1" replica cannot follow d1: d1 ran Python's eval() on Countdown expressions made of digits,
+ - * / ( ) . and whitespace. The replica never evaluates model text: it parses it with Python's own parser
(ast.parse, which runs nothing) and computes the tree with Python's arithmetic (exact ints, "**", "//", unary
+/-; ZeroDivisionError, OverflowError and syntax errors give +inf, as in d1), but it refuses integers beyond
D1_MAX_INT_BITS bits. That is the one place it departs: on a power tower such as 9**9**9, d1 computes a
370-million-digit integer (it hangs for hours); the replica counts the item wrong at once. On d1's Countdown
items (three numbers, all <= 100) an integer over the bound can only be the final value, astronomically far
from any target, so on every expression d1 finishes the verdicts agree. The MATH ground truth is taken from
the target (the last box of the reference solution data.py keeps), where d1 read MATH-500's "answer" field;
the two are the same string whenever the solution's last box is that answer.

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

Deliberate fixes of the public d1 training rewards (each changes its numbers):
  1. DOTALL: d1's strict and soft format regexes lacked re.DOTALL, so multi-line reasoning never matched.
     We check the same patterns as if DOTALL were on, with str.find in linear time (the regexes themselves
     backtrack quadratically on adversarial text).
  2. \boxed: d1 tested ``"\boxed" in text`` without a raw string ("\b" is a backspace), so the MATH format
     reward never saw a box. We test for a real backslash-boxed.
  3. GSM8K numbers: d1's integer reward used str.isdigit. We compare answers as numbers when both parse
     ("-3", "1,000", "2.50" == "2.5") and the integer reward accepts negative and comma-grouped integers.
  4. xml_count: d1 subtracted 0.001 per "trailing" character without bound, and for the "\n<answer>\n" tag
     that tail is the WHOLE completion when "\n</answer>\n" is absent (the usual case: completions end at
     </answer>), so a long, correct answer scored far below zero. Each of the two penalties is capped at
     the 0.125 its tag earns (and d1's +0.001 for an empty tail is dropped), so xml_count is in [0, 0.5];
     short completions score as in d1.
  5. Countdown: d1 ran Python eval() on the answer (a ``9**9**9**9`` hangs training). countdown_value
     parses with ast and evaluates only + - * / and parentheses on short numeric literals (no unary minus).
Smaller deviations: the strict format accepts a completion that ends right at </answer> (d1 required a
trailing newline, which completions decoded without their EOS never have); Countdown answers with a decimal
point are rejected (they would let a model glue given numbers, 3.5 from 3 and 5); brace matching is one
linear pass, so every function here returns in bounded time on any string, in both protocols.

Longer than ~650 lines, on purpose: three readers of the same completions sit side by side, so that a reader
can compare them rule by rule: the training rewards, the "fixed" verdict and the "d1" replica (each rule of one
has its counterpart in the others), plus the coding task's bridge to sandbox.py.
"""

import ast
import concurrent.futures
import math
import operator
import os
import re
from fractions import Fraction

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
    """Content of the first complete <answer>...</answer> block, or None: re.search(r"<answer>(.*?)</answer>",
    text, re.DOTALL) (if the first <answer> has no </answer> after it, no later one has)."""
    start = text.find("<answer>")
    end = text.find("</answer>", start + len("<answer>")) if start >= 0 else -1
    return None if end < 0 else text[start + len("<answer>"):end]


# "\boxed{", "\boxed {" and "\fbox{" open a box; bare braces only matter for matching.
_BRACE_TOKEN = re.compile(r"\\(?:boxed|fbox)[ \t]{0,8}\{|[{}]")


def _box_scan(text: str) -> tuple[list[tuple[int, int]], list[int]]:
    """(start, end) of the content of every brace-matched box, ordered by opening position, and the content
    starts of the boxes left open at the end. One pass with a stack, so nested or unbalanced braces cost linear
    time, never quadratic."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return [], []  # the common case costs two substring searches
    stack, spans = [], []
    for m in _BRACE_TOKEN.finditer(text):
        if m.group() != "}":
            stack.append((m.group() != "{", m.end()))  # (opens a box?, content start)
        elif stack:  # a stray "}" closes nothing
            is_box, start = stack.pop()
            if is_box:
                spans.append((start, m.start()))
    return sorted(spans), [start for is_box, start in stack if is_box]


def last_boxed(text: str) -> str | None:
    """Content of the last-opened brace-matched \\boxed{...} (or \\fbox{...}), stripped; None if none."""
    spans = _box_scan(text)[0]
    return text[spans[-1][0]:spans[-1][1]].strip() if spans else None


def _outer_boxes(text: str) -> list[str]:
    """Contents (stripped, non-blank) of the outermost boxes of text in order: every brace-matched box not inside
    another, then a box left open at the end when its content is one line (a completion cut off, or a missing
    "}"), which holds every later box."""
    spans, unclosed = _box_scan(text)
    tail = text[unclosed[0]:].strip() if unclosed else ""
    if "\n" in tail:
        tail, unclosed = "", []  # an open box followed by more lines of text is no answer
    out, outer_end = [], -1
    for start, end in spans:
        if start >= outer_end and not (unclosed and start >= unclosed[0]):
            outer_end = end
            out.append(text[start:end].strip())
    return [box for box in out + [tail] if box]


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


# A normalised fraction of integers: "\frac{3}{4}", "-\frac{3}{4}", "\frac{-3}{4}" (a/b is already \frac{a}{b}).
_INT_FRACTION = re.compile(r"(-?)\\frac\{(-?\d{1,18})\}\{(-?\d{1,18})\}")


def _fraction(normalized: str) -> tuple[int, int] | None:
    """(numerator, denominator) of a normalised fraction of integers, None for anything else."""
    m = _INT_FRACTION.fullmatch(normalized)
    return None if m is None else ((-1 if m[1] else 1) * int(m[2]), int(m[3]))


def math_equal(pred: str | None, target: str | None, fraction_form: bool = False) -> bool:
    """True iff the normalised answers are equal as strings, or as numbers when both parse as one
    (decimals, \\frac{a}{b}, a/b). fraction_form (the fixed evaluation verdict): a fraction target needs the
    same fraction in lowest terms, and numbers never match across forms (0.5 is not \\frac{1}{2}, 2/4 is not
    1/2, 5/1 is not 5)."""
    if pred is None or target is None:
        return False
    a, b = normalize_math(pred), normalize_math(target)
    if a and a == b:
        return True
    x, y = _to_float(a), _to_float(b)
    if x is None or y is None:
        return False
    if fraction_form:
        fa, fb = _fraction(a), _fraction(b)
        if (fa is None) != (fb is None):
            return False  # a decimal or integer for a fraction, or the reverse
        if fa is not None:
            return 0 not in (fa[1], fb[1]) and math.gcd(*fa) == 1 and Fraction(*fa) == Fraction(*fb)
    return _close(x, y)


def _math_target(target) -> str:
    boxed = last_boxed(str(target))  # a reference solution: its last box; a final answer: itself
    return boxed if boxed is not None else str(target).strip()


def math_reward(completion: str, target) -> dict[str, float]:
    """MATH training reward components (target: the reference solution or its final answer). Correctness:
    d1's training rule, the last \\boxed{} anywhere, else the <answer> text, compared by value."""
    pred = last_boxed(completion)
    pred = extract_answer(completion) if pred is None else pred
    has_answer = 1.0 if "<answer>" in completion else 0.0
    has_box = "\\boxed" in completion  # fix 2: a real backslash, d1's "\boxed" held a backspace
    return {"correctness": 2.0 if math_equal(pred, _math_target(target)) else 0.0,
            "format": 0.5 * (has_answer + (1.0 if has_box else 0.5))}


# ----------------------------------------------------------------------------- Countdown

_MAX_EXPR_CHARS = 200  # 3-4 numbers need ~20 characters; the bound caps the parse and evaluation work
_MAX_DEPTH = 100  # AST depth; 200 characters cannot nest deeper, the check makes the bound explicit
_ARITH_CHARS = re.compile(r"[\d\s+\-*/().]*")  # names, quotes, commas, "e", "%", "_" never get parsed
_LONG_LITERAL = re.compile(r"\d{11}")  # literals of more than 10 digits are invalid
_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class _NotArithmetic(ValueError):
    """The expression has a node other than a number or + - * /."""


def _arith(node: ast.AST, depth: int) -> float:
    if depth > _MAX_DEPTH:
        raise _NotArithmetic("too deep")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)  # floats throughout: no big-integer blow-up, overflow becomes inf
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:  # ** // % are not in the table
        return _BINARY_OPS[type(node.op)](_arith(node.left, depth + 1), _arith(node.right, depth + 1))
    raise _NotArithmetic(type(node).__name__)


def countdown_value(expr: str) -> float | None:
    """Value of an arithmetic expression of + - * / and parentheses on numbers (no unary minus: a given number
    is used as given), or None when it is anything else, too long, divides by zero or is not finite. Never runs the text
    as code (fix 5)."""
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


# ----------------------------------------------------------------------------- Sudoku

def _digit_grid(text: str) -> str:
    """The first 16 digits of text, padded with '0' (never a solution digit): every other character is layout."""
    return "".join(ch for ch in text if ch.isdecimal())[:16].ljust(16, "0")


def _blank_fraction(grid: str, puzzle: str, solution: str) -> float:
    """Fraction of the puzzle's '0' cells where grid has the solution's digit (0.0 for a full puzzle)."""
    blanks = [i for i, cell in enumerate(puzzle[:16]) if cell == "0"]
    return sum(grid[i] == solution[i] for i in blanks) / len(blanks) if blanks else 0.0


def sudoku_reward(completion: str, target) -> dict[str, float]:
    """Sudoku training reward (target: (puzzle, solution)): d1's reward reads the digits of the last
    <answer> block; no block scores 0."""
    puzzle, solution = target
    return {"correctness": _blank_fraction(_digit_grid(_last_answer_block(completion) or ""), puzzle, solution)}


# ----------------------------------------------------------------------------- evaluation, protocol "fixed"

END_OF_TURN = ("<|eot_id|>", "<|endoftext|>")  # LLaDA's end of turn and its EOS (= padding), as decoded text


def _turn(completion: str) -> str:
    """The completion up to the end of the model's turn (the first <|eot_id|> or <|endoftext|>), so that the text
    decoded with and without special tokens gives one verdict."""
    for token in END_OF_TURN:
        completion = completion.partition(token)[0]
    return completion


def _answer_region(text: str, holds=str.strip) -> str | None:
    """The final answer: the content of the last <answer> block for which holds(content) is true, up to its
    </answer> or, when the completion stops inside it, to the end. None when no block qualifies."""
    for part in reversed(text.split("<answer>")[1:]):
        content = part.partition("</answer>")[0]
        if holds(content):
            return content
    return None


def _final_boxes(text: str) -> tuple[list[str], str | None]:
    """(boxes, region): every box of the final <answer> block, or the last box of the text when there is no
    <answer> block; region is that block (None without one)."""
    region = _answer_region(text)
    return (_outer_boxes(text)[-1:] if region is None else _outer_boxes(region)), region


def _box_number(box: str) -> float | None:
    """The number a box holds, or the first number in it ("18 \\text{ dollars}"); of an equation, its last side
    ("6 \\times 12 = 72")."""
    box = box.rpartition("=")[2]
    value = _to_float(box)
    if value is None and (m := _NUMBER_RE.search(box)):
        value = _to_float(m.group())
    return value


def gsm8k_answers(completion: str) -> list[float]:
    """The numbers the fixed verdict reads: those of the boxes of the final answer (see _final_boxes), else the
    number of the <answer> block (or its last number); [] when the model gave none."""
    text = _turn(completion)
    boxes, region = _final_boxes(text)
    values = [v for v in map(_box_number, boxes) if v is not None]
    if values or region is None:
        return values
    value = _to_float(region)
    if value is None and (numbers := _NUMBER_RE.findall(region)):
        value = _to_float(numbers[-1])
    return [] if value is None else [value]


def gsm8k_eval(completion: str, target) -> float:
    """1.0 iff the model gave an answer and every number it gave equals the target."""
    answers, gold = gsm8k_answers(completion), _to_float(gsm8k_target(target))
    return 1.0 if answers and gold is not None and all(_close(a, gold) for a in answers) else 0.0


def math_answers(completion: str) -> list[str]:
    """The boxes of the final answer (see _final_boxes), else the <answer> block's text; [] when none."""
    boxes, region = _final_boxes(_turn(completion))
    return boxes if boxes or region is None else [region.strip()]


def math_eval(completion: str, target) -> float:
    """1.0 iff the model gave an answer and every answer equals the target's final answer (fraction_form)."""
    answers, gold = math_answers(completion), _math_target(target)
    return 1.0 if answers and all(math_equal(a, gold, fraction_form=True) for a in answers) else 0.0


_LATEX_OPS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"),
              ("\\left", ""), ("\\right", ""))
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_BARE_NUMBER = re.compile(r"\s*\d+(?:\.\d+)?\s*")


def _countdown_expression(answer: str) -> str:
    """An answer as plain arithmetic: LaTeX operators mapped, \\frac{a}{b} -> (a)/(b), and of "expr = 12" or
    "12 = expr" the side that is not a bare number (unchanged, so invalid, when that is ambiguous)."""
    for latex, op in _LATEX_OPS:
        answer = answer.replace(latex, op)
    for _ in range(4):  # innermost first; 4 levels are plenty for 3-4 numbers, and bound the work
        if len(answer) > _MAX_EXPR_CHARS or "frac" not in answer:
            break
        answer = _LATEX_FRAC.sub(r"(\1)/(\2)", answer)
    if "=" in answer:
        sides = [side for side in answer.split("=") if not _BARE_NUMBER.fullmatch(side)]
        answer = sides[0] if len(sides) == 1 else answer
    return answer.strip()


def countdown_answers(completion: str) -> list[str]:
    """The expressions the fixed verdict reads: the boxes of the final answer (see _final_boxes), else the
    <answer> block's text, as plain arithmetic; [] when none (an equation in the reasoning is no answer)."""
    boxes, region = _final_boxes(_turn(completion))
    return [_countdown_expression(a) for a in (boxes if boxes or region is None else [region])]


def countdown_eval(completion: str, target) -> float:
    """1.0 iff every expression the model gave uses the given numbers once each (+ - * / and parentheses, no
    unary minus) and evaluates to the goal."""
    numbers, goal = target
    answers = countdown_answers(completion)
    return 1.0 if answers and all(_countdown_correct(a, numbers, goal) for a in answers) else 0.0


def _has_digit(text: str) -> bool:
    return any(ch.isdecimal() for ch in text)


def parse_sudoku(completion: str) -> str:
    """The fixed verdict's grid: the digits of the last <answer> block holding one (closed or not), else of the
    text after the last </answer>; 16 characters, '0'-padded. A grid anywhere else (the puzzle restated in the
    reasoning) is never read."""
    text = _turn(completion)
    region = _answer_region(text, holds=_has_digit)
    if region is None:
        region = text.rpartition("</answer>")[2] if "</answer>" in text else ""
    return _digit_grid(region)


def sudoku_eval(completion: str, target) -> float:
    """Fraction of the puzzle's empty cells that the parsed grid fills correctly."""
    puzzle, solution = target
    return _blank_fraction(parse_sudoku(completion), puzzle, solution)


# ----------------------------------------------------------------------------- evaluation, protocol "d1"
# d1's public scorer (eval/parse_and_get_acc.py @837888f) as ../shared/docs/d1_eval_protocol.md describes it,
# quirks included. Each pattern d1 ran as a regex is computed here with str.find in linear time (the regexes
# themselves backtrack quadratically on adversarial text); the docstrings name the regex each one replaces.

def _d1_float(s: str) -> float | None:
    """Python's float(), which d1 called: accepts " 5 ", "1e3", "1_000", "nan", "inf", Unicode digits."""
    try:
        return float(s)
    except ValueError:
        return None


_D1_GSM8K_GOLD = re.compile(r"####\s*\$?([\d,]+(?:\.\d+)?)")
_D1_NUMBER = re.compile(r"-?\d+\.?\d*")


def d1_gsm8k_target(target) -> float | None:
    """d1's stored GSM8K ground truth: the number after the first "####" (optional "$", commas removed; no minus,
    so negative answers are None). A number passes through (d1's files stored floats)."""
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return float(target)
    m = _D1_GSM8K_GOLD.search(str(target)) if target is not None else None
    return None if m is None else _d1_float(m[1].replace(",", ""))


def _d1_gsm8k_boxes(text: str) -> list[str]:
    """re.findall(r"\\\\boxed{(.*?)}", text): each "\\boxed{" up to the first "}", no newline in between (no
    DOTALL); the search resumes after a match's "}" (a box inside a matched one is never seen)."""
    out, pos, close, newline = [], 0, -1, -1
    while (at := text.find("\\boxed{", pos)) >= 0:
        start = at + len("\\boxed{")
        if close < start:  # cached: "}" and "\n" are found once per stretch of text, so the loop is linear
            close = text.find("}", start)
            if close < 0:
                break  # no "}" left: no more matches
        if newline < start:
            newline = text.find("\n", start)
            newline = len(text) if newline < 0 else newline
        if newline < close:
            pos = at + 1  # this "\boxed{" has a newline before its "}": the regex moves on
        else:
            out.append(text[start:close])
            pos = close + 1
    return out


def d1_gsm8k_prediction(completion: str) -> float | None:
    """d1's GSM8K extraction: the first \\boxed{...} (d1's pattern, see _d1_gsm8k_boxes) that yields a number,
    float() of it or its first number (blank and all-dots boxes skipped); only if none, the first
    <answer>...</answer> block, float() of it or its LAST number."""
    for box in _d1_gsm8k_boxes(completion):
        box = box.strip()
        if set(box) <= {"."}:
            continue  # "" or "..."
        value = _d1_float(box)
        if value is None and (m := _D1_NUMBER.search(box)):
            value = float(m.group())
        if value is not None:
            return value
    block = _first_answer_block(completion)
    if block is None:
        return None
    value = _d1_float(block.strip())
    if value is None and (numbers := _D1_NUMBER.findall(block)):
        value = float(numbers[-1])
    return value


def d1_gsm8k_eval(completion: str, target) -> float:
    """1.0 iff d1's prediction == d1's ground truth as floats (no tolerance)."""
    pred, gold = d1_gsm8k_prediction(completion), d1_gsm8k_target(target)
    return 1.0 if pred is not None and gold is not None and pred == gold else 0.0


_BRACE = re.compile(r"[{}]")


def _d1_last_boxed(text: str) -> str | None:
    """d1's (Hendrycks') last-boxed helper: with "\\boxed " (a space) anywhere, "\\boxed " + the text after its
    LAST occurrence up to the first "$"; else from the last "\\boxed" (else the last "\\fbox") to the "}" that
    brings the brace count back to 0 (None if none does); with neither, the WHOLE text."""
    if "\\boxed " in text:
        return "\\boxed " + text.rpartition("\\boxed ")[2].partition("$")[0]
    at = text.rfind("\\boxed")
    at = text.rfind("\\fbox") if at < 0 else at
    if at < 0:
        return text
    depth = 0
    for m in _BRACE.finditer(text, at):
        depth += 1 if m.group() == "{" else -1
        if m.group() == "}" and depth == 0:
            return text[at:m.end()]
    return None


def _d1_unbox(s: str) -> str:
    """d1's remove_boxed: drop the "\\boxed " prefix, or the "\\boxed{" ... "}" wrapper; anything else unchanged."""
    if s.startswith("\\boxed "):
        return s[len("\\boxed "):]
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[len("\\boxed{"):-1]
    return s


class _D1NormalizeError(ValueError):
    """One of the cases where d1's normaliser raised (then d1 compared the raw strings)."""


def _d1_fix_sqrt(s: str) -> str:
    parts = s.split("\\sqrt")
    for i in range(1, len(parts)):
        if not parts[i]:
            raise _D1NormalizeError("\\sqrt with nothing after it")
        if parts[i][0] != "{":
            parts[i] = "{" + parts[i][0] + "}" + parts[i][1:]  # \sqrt2 -> \sqrt{2}
    return "\\sqrt".join(parts)


def _d1_fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    for i in range(1, len(parts)):
        p = parts[i]
        if not p:
            raise _D1NormalizeError("\\frac with nothing after it")
        if p[0] == "{":
            continue
        if len(p) < 2:
            return s  # "\frac" + one character: d1 gave up and kept the whole string as it was
        # \fracab -> \frac{a}{b}; \fraca{b}... -> \frac{a}{b}...
        parts[i] = "{" + p[0] + "}" + (p[1:] if p[1] == "{" else "{" + p[1] + "}" + p[2:])
    return "\\frac".join(parts)


def _d1_fix_slash(s: str) -> str:
    if s.count("/") != 1:
        return s
    a, b = s.split("/")
    try:
        num, den = int(a), int(b)  # Python's int(): " 1", "+1", "1_0" pass
    except ValueError as e:
        raise _D1NormalizeError("a/b with a non-integer side") from e
    return f"\\frac{{{num}}}{{{den}}}" if s == f"{num}/{den}" else s


def d1_normalize(s: str) -> str:
    """d1's (Hendrycks') strip_string, step by step; raises _D1NormalizeError where d1's raised."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # units: keep the text before "\text{ "
        before, *after = s.split("\\text{ ")
        if len(after) > 1:
            raise _D1NormalizeError("several \\text{ ")
        s = before
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if s.count("=") == 1 and len(s.partition("=")[0]) <= 2:  # "x = 5" -> " 5"
        s = s.partition("=")[2]
    s = _d1_fix_fracs(_d1_fix_sqrt(s).replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _d1_fix_slash(s)


def d1_math_prediction(completion: str) -> str | None:
    """d1's MATH extraction: the last box unwrapped (the WHOLE completion when there is no box, so its
    <answer> fallback never runs then); only when that is None (an unclosed last box) or "", the first
    <answer>...</answer> block, stripped."""
    located = _d1_last_boxed(completion)
    pred = None if located is None else _d1_unbox(located)
    if not pred:
        block = _first_answer_block(completion)
        pred = None if block is None else block.strip()
    return pred


def d1_math_eval(completion: str, target) -> float:
    """1.0 iff d1's normalised prediction equals the normalised ground truth (the raw strings when either
    normalisation raises)."""
    pred, gold = d1_math_prediction(completion), _math_target(target)
    if pred is None:
        return 0.0
    try:
        return 1.0 if d1_normalize(pred) == d1_normalize(gold) else 0.0
    except _D1NormalizeError:
        return 1.0 if pred == gold else 0.0


_D1_EQUATION_RUN = re.compile(r"[0-9+\-*/() ]+")


def d1_countdown_expression(completion: str) -> str:
    """d1's Countdown extraction: the last box unwrapped as in MATH (the whole completion without a box; for an
    unclosed last box the first <answer> block stripped, else the whole completion); \\div \\times \\cdot mapped;
    then re.search(r"([0-9+\\-*/() ]+)=[0-9. ]+"), the leftmost run of those characters followed by "=" and a
    digit, dot or space, stripped, when there is one."""
    located = _d1_last_boxed(completion)
    if located is None:
        block = _first_answer_block(completion)
        text = completion if block is None else block.strip()
    else:
        text = _d1_unbox(located)
    text = text.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    for m in _D1_EQUATION_RUN.finditer(text):  # "=" is not in the run, so only a maximal run can precede it
        if text[m.end():m.end() + 1] == "=" and text[m.end() + 1:m.end() + 2] in tuple("0123456789. "):
            return m.group().strip()
    return text


D1_MAX_INT_BITS = 1 << 17  # the replica refuses larger integers (see the module docstring): 100**(99*98) fits


class _D1TooBig(ArithmeticError):
    """An integer beyond D1_MAX_INT_BITS: d1 would have computed it, for up to hours (a power tower)."""


def _d1_pow(a, b):
    if type(a) is int and type(b) is int and b > 0 and abs(a) > 1 and b * math.log2(abs(a)) > D1_MAX_INT_BITS:
        raise _D1TooBig
    return a ** b


def _d1_mul(a, b):
    if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > D1_MAX_INT_BITS:
        raise _D1TooBig
    return a * b


_D1_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _d1_mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: _d1_pow}


def _d1_arith(node: ast.AST):
    """Python's value of an arithmetic AST (int, float or complex, with Python's own operators and errors)."""
    signs = []  # unary chains are walked in a loop: Python parses "- - - 8" a thousand signs deep
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        signs.append(node.op)
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
    elif isinstance(node, ast.BinOp) and type(node.op) in _D1_BINARY:  # depth <= the number of literals
        value = _D1_BINARY[type(node.op)](_d1_arith(node.left), _d1_arith(node.right))
    else:  # "2(3)" (a call), "..." (Ellipsis): eval raised a TypeError on these
        raise _NotArithmetic(type(node).__name__)
    for op in reversed(signs):
        value = -value if isinstance(op, ast.USub) else +value
    return value


_D1_ARITH_TEXT = re.compile(r"[\d+\-*/().\s]+")


def d1_countdown_value(expr: str):
    """What d1's eval(expr) returned for text of digits, + - * / ( ) . and whitespace, else +inf (d1's value on
    any error). eval strips leading spaces and tabs, then parses with Python's parser, as ast.parse does here."""
    if not _D1_ARITH_TEXT.fullmatch(expr):
        return math.inf
    try:
        return _d1_arith(ast.parse(expr.lstrip(" \t"), mode="eval").body)
    except (SyntaxError, ValueError, ArithmeticError, RecursionError, MemoryError):
        return math.inf  # ArithmeticError: ZeroDivisionError, OverflowError, _D1TooBig


def d1_countdown_eval(completion: str, target) -> float:
    """1.0 iff d1's expression uses exactly the given numbers (its digit runs, as a multiset: "1.5" is 1 and 5),
    is arithmetic text, and evaluates within 1e-5 of the target."""
    numbers, goal = target
    expr = d1_countdown_expression(completion)
    runs = re.findall(r"\d+", expr)
    if any(len(run.lstrip("0")) > 18 for run in runs):  # no given number is that long (and int() has limits)
        return 0.0
    if sorted(int(run) for run in runs) != sorted(int(n) for n in numbers):
        return 0.0
    return 1.0 if goal is not None and abs(d1_countdown_value(expr) - goal) < 1e-5 else 0.0


def _d1_sudoku_p1(text: str) -> str | None:
    """re.search(r"<answer>.*?```\\s*([\\d\\s]+)```", text, re.DOTALL).group(1): the first code fence after the
    first <answer> (anywhere after it, even past </answer>) holding only digits and whitespace."""
    start = text.find("<answer>")
    if start < 0:
        return None
    at = text.find("```", start + len("<answer>"))
    while at >= 0:
        end = at + 3
        while end < len(text) and (text[end].isdecimal() or text[end].isspace()):
            end += 1
        if end > at + 3 and text.startswith("```", end):
            run = text[at + 3:end]
            body = run.lstrip()  # \s* is greedy; ([\d\s]+) keeps at least one character
            return body if body else run[-1]
        at = text.find("```", at + 1)  # runs of candidates never overlap: the scan is linear
    return None


def _d1_until_end_token(text: str, start: int, closers: tuple[str, ...]) -> str | None:
    """text[start:] up to the first of closers; None when none occurs."""
    ends = [e for e in (text.find(c, start) for c in closers) if e >= 0]
    return text[start:min(ends)] if ends else None


def _d1_sudoku_p4(text: str) -> str | None:
    """re.search(r".*?(\\d{16})\\s*</answer>", text, re.DOTALL).group(1): the earliest 16 digits followed by
    optional whitespace and </answer>."""
    at = text.find("</answer>")
    while at >= 0:
        end = at
        while end > 0 and text[end - 1].isspace():
            end -= 1
        if end >= 16 and all(ch.isdecimal() for ch in text[end - 16:end]):
            return text[end - 16:end]
        at = text.find("</answer>", at + 1)
    return None


_D1_STANDALONE_GRID = re.compile(r"\b(\d{16})\b")


def d1_sudoku_grid(completion: str) -> str:
    """d1's Sudoku extraction: the first of five patterns whose group, stripped, is not blank (P1 a digit fence
    after <answer>; P2 <answer> up to EOT, EOS or </answer>; P3 </answer> up to EOT, EOS or the end; P4 16
    digits before </answer>; P5 the first standalone 16-digit run), whitespace deleted, cut/padded to 16 with
    '0' ("" when none). Brackets, commas and the like stay and shift the cells."""
    start, end = completion.find("<answer>"), completion.find("</answer>")
    candidates = (  # evaluated lazily, in d1's order
        lambda: _d1_sudoku_p1(completion),
        lambda: None if start < 0 else _d1_until_end_token(completion, start + len("<answer>"),
                                                           (*END_OF_TURN, "</answer>")),
        lambda: None if end < 0 else _d1_until_end_token(completion + END_OF_TURN[0], end + len("</answer>"),
                                                         END_OF_TURN),  # or the end of the text
        lambda: _d1_sudoku_p4(completion),
        lambda: (m := _D1_STANDALONE_GRID.search(completion)) and m[1],
    )
    for candidate in candidates:
        group = candidate()
        if group and group.strip():
            return "".join(group.split())[:16].ljust(16, "0")
    return ""


def d1_sudoku_eval(completion: str, target) -> float:
    """Fraction of the puzzle's empty cells where d1's grid has the solution's digit (0 when nothing parsed)."""
    puzzle, solution = target
    grid = d1_sudoku_grid(completion)
    return _blank_fraction(grid, puzzle, solution) if grid else 0.0


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
    """pass@1 verdict: 1.0 iff the program extracted from the turn (see _turn) passes all tests in one sandboxed
    run."""
    tests = code_tests(target)
    return sandbox.pass_at_1(_turn(completion), tests)


def code_prediction(completion: str) -> str:
    """The program the verdict runs ("" when there is none)."""
    return sandbox.extract_code(_turn(completion)) or ""


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


PROTOCOLS = ("fixed", "d1")  # evaluation protocols (module docstring)


def _join(answers) -> str:
    return " | ".join(f"{a:.15g}" if isinstance(a, float) else a for a in answers)


# task -> (verdict, what it read as text) per protocol; coding tasks have the fixed protocol only.
_FIXED = {
    "gsm8k": (gsm8k_eval, lambda c: _join(gsm8k_answers(c))),
    "math": (math_eval, lambda c: _join(math_answers(c))),
    "countdown": (countdown_eval, lambda c: _join(countdown_answers(c))),
    "sudoku": (sudoku_eval, parse_sudoku),
    **dict.fromkeys(CODE_TASKS, (code_eval, code_prediction)),
}
_D1 = {
    "gsm8k": (d1_gsm8k_eval, lambda c: "" if (p := d1_gsm8k_prediction(c)) is None else f"{p:.15g}"),
    "math": (d1_math_eval, lambda c: d1_math_prediction(c) or ""),
    "countdown": (d1_countdown_eval, d1_countdown_expression),
    "sudoku": (d1_sudoku_eval, d1_sudoku_grid),
}
D1_TASKS = tuple(_D1)  # the tasks d1's scorer covers


def _protocol(task: str, protocol: str) -> tuple:
    _lookup(task)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "d1" and task not in _D1:
        raise ValueError(f"d1 published no scorer for {task!r}; protocol 'd1' covers {', '.join(D1_TASKS)}")
    return (_FIXED if protocol == "fixed" else _D1)[task]


def eval_score(task: str, completion: str, target, protocol: str = "fixed") -> float:
    """Evaluation verdict in [0, 1] (Sudoku: fraction of blank cells right; coding: pass@1). protocol "fixed"
    (the default) or "d1" (d1's public scorer, replicated; give it the completion decoded WITH special tokens)."""
    return float(_protocol(task, protocol)[0](completion, target))


def eval_scores(task: str, completions: list[str], targets: list, workers: int | None = None,
                protocol: str = "fixed") -> list[float]:
    """eval_score of each (completion, target), in order; coding tasks run up to `workers` sandboxes at once."""
    _protocol(task, protocol)
    return _map(task, lambda c, t: eval_score(task, c, t, protocol), completions, targets, workers)


def parsed_answer(task: str, completion: str, protocol: str = "fixed") -> str:
    """What the verdict of `task` under `protocol` read from `completion`, as text (for logs and inspection);
    several answers (a hedge) are joined with " | "."""
    return _protocol(task, protocol)[1](completion)
