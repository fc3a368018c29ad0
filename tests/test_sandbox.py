"""Tests for sandbox.py: right verdicts on good, bad and hostile programs, in bounded time, leaving nothing behind.

Hostile programs use small timeouts (1 s); SLACK covers interpreter start-up on a busy 2-core machine.
"""

import json
import os
import resource
import socket
import sys
import tempfile
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sandbox  # noqa: E402
from sandbox import code_reward, extract_code, pass_at_1, run_python, run_tests  # noqa: E402

SLACK = 3.0  # seconds on top of a timeout
PRINT_CWD = "import os\nprint(os.getcwd(), flush=True)\n"  # so a test learns the sandbox's temp dir


def answer(code: str) -> str:
    return f"<reasoning>\nthink\n</reasoning>\n<answer>\n```python\n{code}\n```\n</answer>"


def state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]  # after "(comm)", which may itself contain ")"
    except FileNotFoundError:
        return None


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (it can run no code)."""
    return state(pid) in (None, "Z")


def zombies_of(uid: int) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid and state(int(pid)) == "Z":
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (zombies have an empty command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read() and not is_dead(int(pid)):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def wait_dead(pids: list[int], seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(is_dead(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(is_dead(p) for p in pids)


def assert_cleaned_up(result: sandbox.Result) -> None:
    """The temp dir (first stdout line) is gone and no process runs from it."""
    workdir = result.stdout.splitlines()[0]
    assert workdir.startswith(os.path.join(os.path.realpath(tempfile.gettempdir()), "sandbox_"))
    assert not os.path.exists(workdir)
    assert wait_dead(processes_mentioning(workdir))


def own_network_namespace() -> bool:
    r = run_python("import os\nprint(os.readlink('/proc/self/ns/net'))")
    return r.passed and r.stdout.strip() != os.readlink("/proc/self/ns/net")


# ----------------------------------------------------------------------------- extraction and rewards

def test_extract_code():
    assert extract_code("no code here") is None
    assert extract_code("```python\nx = 1\n") is None  # unclosed block
    assert extract_code("```python\na = 1\n```\ntext\n```\nb = 2\n```") == "b = 2\n"  # last block, bare fence ok
    assert extract_code("```py\nc = 3\n```") == extract_code("```Python \nc = 3\n```") == "c = 3\n"
    inside = "```python\nin_answer = 1\n```"
    assert extract_code(f"<answer>{inside}</answer>\n```python\nafter = 1\n```") == "in_answer = 1\n"
    assert extract_code("<answer>no block</answer>```python\nx = 1\n```") == "x = 1\n"


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]


def test_correct_wrong_and_broken_solutions():
    good = answer("def add(a, b):\n    return a + b")
    assert code_reward(good, ADD_TESTS, timeout=3) == {"correctness": 1.0, "format": 0.1, "total": 1.1}
    assert pass_at_1(good, ADD_TESTS, timeout=3) == 1.0
    outside = "```python\ndef add(a, b):\n    return a + b\n```"  # correct but not inside <answer>
    assert code_reward(outside, ADD_TESTS, timeout=3) == {"correctness": 1.0, "format": 0.0, "total": 1.0}

    half = answer("def add(a, b):\n    return 3 if a == 1 else 0")  # passes 2 of 3
    assert code_reward(half, ADD_TESTS, timeout=3)["correctness"] == pytest.approx(2 / 3)
    assert pass_at_1(half, ADD_TESTS, timeout=3) == 0.0
    for bad in [answer("def add(a, b):\n    return a - b"), answer("def add(a, b)\n    return a + b"), answer("")]:
        assert code_reward(bad, ADD_TESTS, timeout=3) == {"correctness": 0.0, "format": 0.1, "total": 0.1}
        assert pass_at_1(bad, ADD_TESTS, timeout=3) == 0.0


def test_never_raises_on_odd_completions():
    for text in ["", "```", "<answer></answer>", "```python\n```", answer("x = '\ud800'"), answer("\x00"),
                 "```python\n" * 200, answer("import sys; sys.exit(3)")]:
        reward = code_reward(text, ADD_TESTS, timeout=3)
        assert reward["correctness"] == 0.0 and reward["total"] == reward["format"]
        assert pass_at_1(text, ADD_TESTS, timeout=3) == 0.0
    assert code_reward(answer("x = 1"), [], timeout=3)["correctness"] == 0.0


def test_exiting_before_the_tests_with_status_zero_fails():
    # The reward hack of plain exit-status harnesses: stop with status 0 before any test runs.
    for hack in ["import os; os._exit(0)", "import sys; sys.exit(0)", "raise SystemExit", "exit()"]:
        assert run_python(hack).passed  # exit status 0 ...
        assert pass_at_1(answer(hack), ADD_TESTS, timeout=3) == 0.0  # ... but the tests never ran
        assert code_reward(answer(hack), ADD_TESTS, timeout=3)["correctness"] == 0.0


# ----------------------------------------------------------------------------- HumanEval / MBPP / KodCode styles

HUMANEVAL = [  # (prompt, good body, wrong body, check, entry point)
    ('def add(x: int, y: int) -> int:\n    """Add two numbers."""\n', "    return x + y\n", "    return x * y\n",
     "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 7) == 7\n"
     "    assert candidate(-4, 4) == 0\n",
     "add"),
    ('def is_palindrome(text: str) -> bool:\n    """True if text reads the same backwards."""\n',
     "    return text == text[::-1]\n", "    return text[0] == text[-1]\n",
     "def check(candidate):\n    assert candidate('')\n    assert candidate('aba')\n    assert not candidate('abca')\n",
     "is_palindrome"),
    ('def below_zero(operations: list[int]) -> bool:\n    """True if the running balance ever drops below zero."""\n',
     "    balance = 0\n    for op in operations:\n        balance += op\n"
     "        if balance < 0:\n            return True\n    return False\n",
     "    return sum(operations) < 0\n",
     "def check(candidate):\n    assert candidate([]) is False\n    assert candidate([1, -2, 2]) is True\n"
     "    assert candidate([1, 2, -3]) is False\n",
     "below_zero"),
]


@pytest.mark.parametrize("prompt,good,wrong,check,entry_point", HUMANEVAL)
def test_humaneval_style_pass_at_1(prompt, good, wrong, check, entry_point):
    tests = [f"{check}\ncheck({entry_point})\n"]
    assert pass_at_1(answer(prompt + good), tests, timeout=3) == 1.0
    assert pass_at_1(answer(prompt + wrong), tests, timeout=3) == 0.0


KODCODE_TESTS = """from solution import two_sum
import pytest

def test_basic():
    assert two_sum([2, 7, 11, 15], 9) == [0, 1]

def test_negative():
    assert two_sum([-3, 4, 3, 90], 0) == [0, 2]

def test_bad_input():
    with pytest.raises(TypeError):
        two_sum(None, 1)
"""


def test_kodcode_style_pytest_module():
    good = ("def two_sum(nums, target):\n    seen = {}\n    for i, x in enumerate(nums):\n"
            "        if target - x in seen:\n            return [seen[target - x], i]\n        seen[x] = i\n")
    assert run_tests(good, [KODCODE_TESTS], timeout=3) == [True]
    first_pair_only = "def two_sum(nums, target):\n    return [0, 1]\n"  # fails test_negative
    assert run_tests(first_pair_only, [KODCODE_TESTS], timeout=3) == [False]
    # A program's own test_* helpers are not called: only the tests' functions are.
    assert run_tests(good + "def test_helper():\n    raise AssertionError\n", [KODCODE_TESTS], timeout=3) == [True]


def test_run_tests_parallel_keeps_order():
    program = "import time\ndef f(x, delay):\n    time.sleep(delay)\n    return x\n"
    tests = ["assert f(1, 0.6) == 1", "assert f(1, 0.0) == 2", "assert f(3, 0.3) == 3", "assert f(4, 0.1) == 0",
             "assert f(5, 0.0) == 5"]
    start = time.monotonic()
    assert run_tests(program, tests, timeout=3, workers=3) == [True, False, True, False, True]
    assert time.monotonic() - start < 1.0 + SLACK


# ----------------------------------------------------------------------------- hostile programs

def test_infinite_loop_and_sleep_time_out():
    busy_sleep = "import time\nwhile True:\n    time.sleep(0.01)\n"
    for source in ["while True:\n    pass\n", "import time\ntime.sleep(60)\n", busy_sleep]:
        start = time.monotonic()
        r = run_python(PRINT_CWD + source, timeout=1)
        assert r.timed_out and not r.passed and r.returncode == -9
        assert 1.0 <= r.seconds < 1.0 + SLACK and time.monotonic() - start < 1.0 + SLACK
        assert_cleaned_up(r)
    start = time.monotonic()
    loops = answer("def add(a, b):\n    while True:\n        pass")
    assert code_reward(loops, ADD_TESTS, timeout=1)["correctness"] == 0
    assert time.monotonic() - start < 1.0 + SLACK  # the three tests ran in parallel


def test_fork_bomb_is_contained_and_killed():
    stubborn = "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    for bomb in ["while True:\n    os.fork()\n", stubborn]:
        start = time.monotonic()
        r = run_python(PRINT_CWD + bomb, timeout=1)
        assert not r.passed and time.monotonic() - start < 1.0 + SLACK
        assert_cleaned_up(r)
    assert pass_at_1(answer("import os\nwhile True:\n    os.fork()"), ADD_TESTS, timeout=1) == 0.0


def test_process_limit():
    # RLIMIT_NPROC: at most max_processes more processes than the sandbox user already has (root: nobody).
    source = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n"
              "        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint(n)\n")
    uid = sandbox.SANDBOX_UID if os.geteuid() == 0 else os.getuid()
    deadline = time.monotonic() + 5  # zombies of earlier tests count until init reaps them, and then free slots
    while zombies_of(uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    r = run_python(source, timeout=3, max_processes=8)
    assert r.passed and 0 < int(r.stdout) < 8


def test_memory_hog_fails_fast():
    for source in ["x = bytearray(10**10)\n", "x = []\nwhile True:\n    x.append(bytearray(10**6))\n"]:
        r = run_python(source, timeout=3, memory_mb=256)
        assert not r.passed and not r.timed_out and "MemoryError" in r.stderr and r.seconds < 3


def test_huge_output_is_bounded():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for source in ["print('x' * 10**8)\n", "while True:\n    print('y' * 1000)\n"]:
        r = run_python(source, timeout=2, max_output=1000)
        assert not r.passed and not r.timed_out and r.seconds < 2  # RLIMIT_FSIZE stops the write
        assert len(r.stdout) == 1000 and len(r.stderr) <= 1000 and "File too large" in r.stderr
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: we read 1000 bytes


def test_files_outside_are_not_protected_but_size_is_and_workdir_goes():
    cwd = os.getcwd()
    outside = os.path.join("/tmp", f"sandbox_test_{uuid.uuid4().hex}.txt")
    try:
        r = run_python(PRINT_CWD + f"open({outside!r}, 'w').write('hello')\nopen('local.txt', 'w').write('ok')\n")
        assert r.passed and open(outside).read() == "hello"  # NOT prevented: same user (or nobody) may write /tmp
    finally:
        if os.path.exists(outside):
            os.remove(outside)
    assert_cleaned_up(r)
    r = run_python(PRINT_CWD + "f = open('big', 'wb')\ntry:\n    f.write(b'x' * 50 * 2**20)\nfinally:\n"
                   "    f.flush()\n    print(os.path.getsize('big'), flush=True)\n", max_file_mb=10)
    assert not r.passed and "File too large" in r.stderr and int(r.stdout.splitlines()[1]) <= 10 * 2**20
    assert_cleaned_up(r)
    locked = "os.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nfor d in ['a/b', 'a', '.']:\n    os.chmod(d, 0)\n"
    r = run_python(PRINT_CWD + locked)  # takes permissions off its own directories, cwd included
    assert r.passed
    assert_cleaned_up(r)
    assert os.getcwd() == cwd


def test_child_processes_run_under_the_limits_and_do_not_outlive_the_run():
    source = PRINT_CWD + (
        "import resource, subprocess\n"
        "print(subprocess.run(['sh', '-c', 'ulimit -v'], capture_output=True, text=True).stdout.strip())\n"
        "p = subprocess.Popen(['sleep', '37.25'])\n"
        "os.system('sleep 37.5 & echo $! > bg.pid')\n"
        "print(p.pid, open('bg.pid').read().strip(), flush=True)\n")
    r = run_python(source, timeout=3, memory_mb=512)
    assert r.passed, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == str(512 * 1024)  # KiB: the shell inherited RLIMIT_AS
    assert wait_dead([int(pid) for pid in lines[2].split()])
    assert not processes_mentioning("37.25") and not processes_mentioning("37.5")
    assert_cleaned_up(r)


def test_setsid_escape_is_killed_with_a_network_namespace():
    if not own_network_namespace():
        pytest.skip("no network namespace here: a setsid() process can outlive the run (documented)")
    r = run_python("import subprocess\np = subprocess.Popen(['sleep', '41.5'], start_new_session=True)\nprint(p.pid)\n")
    assert r.passed and wait_dead([int(r.stdout)])


def test_network_is_cut_with_a_network_namespace():
    if not own_network_namespace():
        pytest.skip("no network namespace here: the network is reachable (documented)")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n", timeout=3)
    assert not r.passed and "Error" in r.stderr  # ENETUNREACH: only a loopback device, and it is down


def test_project_is_not_importable_and_environment_is_empty(monkeypatch):
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(project)
    monkeypatch.setenv("PYTHONPATH", project)
    monkeypatch.setenv("SECRET_TOKEN", "x")
    r = run_python("import sandbox\n")
    assert not r.passed and "ModuleNotFoundError" in r.stderr
    r = run_python("import rewards\n")
    assert not r.passed and "ModuleNotFoundError" in r.stderr
    r = run_python(f"import json, os, sys\nassert {project!r} not in sys.path and '' not in sys.path\n"
                   "print(json.dumps(sorted(os.environ)))")
    assert r.passed, r.stderr
    names = json.loads(r.stdout)
    assert "SECRET_TOKEN" not in names and "HOME" not in names and "PYTHONPATH" not in names
    assert set(names) <= set(sandbox.ENV) | {"LC_CTYPE"}  # Python may coerce the C locale to UTF-8


def test_limits_cannot_be_raised_and_root_is_dropped():
    r = run_python("import os, resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert not r.passed and "ValueError" in r.stderr
    r = run_python("import os\nprint(os.getuid(), os.geteuid())\n")
    assert r.passed
    if os.geteuid() == 0:
        assert r.stdout.split() == [str(sandbox.SANDBOX_UID)] * 2
