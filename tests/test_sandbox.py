"""Tests for sandbox.py: right verdicts on good, bad and hostile programs, isolation (bwrap backend), reward hacks
that get nothing, and nothing left behind.

Tests marked by the `backend` fixture run under both backends; the isolation tests need bwrap and are skipped,
with the reason, where this machine cannot run it. No test asserts speed: timeouts only catch hangs (HANG).
"""

import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sandbox  # noqa: E402
from sandbox import code_reward, extract_code, grade, pass_at_1, run_python, run_tests  # noqa: E402

T = 30  # the timeout of runs that must end on their own: generous, since a loaded machine slows every run
HANG = 60.0  # seconds on top of a timeout before a run counts as hung (never reached by a working sandbox)
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use(backend: str) -> str:
    """`backend`, or skip the test (saying why) where this machine cannot run it."""
    if backend == "bwrap" and (problem := sandbox.bwrap_problem()) is not None:
        pytest.skip(f"bwrap cannot run here, so isolation is not tested: {problem}")
    return backend


@pytest.fixture(params=["bwrap", "rlimit"])
def backend(request):
    return use(request.param)


@pytest.fixture
def isolated():
    return use("bwrap")


@pytest.fixture(autouse=True)
def best_backend(monkeypatch):
    """Calls without backend= use the best backend this machine has (as root the default would refuse to run
    without bwrap)."""
    monkeypatch.setenv("D1_SANDBOX", "bwrap" if sandbox.bwrap_problem() is None else "rlimit")


def answer(code: str) -> str:
    return f"<reasoning>\nthink\n</reasoning>\n<answer>\n```python\n{code}\n```\n</answer>"


def marker() -> str:
    return f"d1test{uuid.uuid4().hex}"


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


def wait_dead(pids: list[int], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(is_dead(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(is_dead(p) for p in pids)


def background(tag: str) -> str:
    """Program text: start a shell that sleeps with `tag` on its command line, so the test can look for it."""
    return f"import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 1000; : {tag}'])\n"


def settle(backend: str) -> None:
    """rlimit caps processes per user: wait (up to 5 s) until init has reaped the zombies earlier tests left,
    which count until then and free slots afterwards."""
    uid = sandbox.SANDBOX_UID if os.geteuid() == 0 else os.getuid()
    deadline = time.monotonic() + 5
    while backend == "rlimit" and zombies_of(uid) and time.monotonic() < deadline:
        time.sleep(0.1)


def own_network_namespace(backend: str) -> bool:
    r = run_python("import os\nprint(os.readlink('/proc/self/ns/net'))", timeout=T, backend=backend)
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
    assert code_reward(good, ADD_TESTS, timeout=T) == {"correctness": 1.0, "format": 0.1, "total": 1.1}
    assert pass_at_1(good, ADD_TESTS, timeout=T) == 1.0
    outside = "```python\ndef add(a, b):\n    return a + b\n```"  # correct but not inside <answer>
    assert code_reward(outside, ADD_TESTS, timeout=T) == {"correctness": 1.0, "format": 0.0, "total": 1.0}

    half = answer("def add(a, b):\n    return 3 if a == 1 else 0")  # passes 2 of 3
    assert code_reward(half, ADD_TESTS, timeout=T)["correctness"] == pytest.approx(2 / 3)
    assert pass_at_1(half, ADD_TESTS, timeout=T) == 0.0
    for bad in [answer("def add(a, b):\n    return a - b"), answer("def add(a, b)\n    return a + b"), answer("")]:
        assert code_reward(bad, ADD_TESTS, timeout=T) == {"correctness": 0.0, "format": 0.1, "total": 0.1}
        assert pass_at_1(bad, ADD_TESTS, timeout=T) == 0.0


def test_never_raises_on_odd_completions():
    for text in ["", "```", "<answer></answer>", "```python\n```", answer("x = '\ud800'"), answer("\x00"),
                 "```python\n" * 200, answer("import sys; sys.exit(3)")]:
        reward = code_reward(text, ADD_TESTS, timeout=T)
        assert reward["correctness"] == 0.0 and reward["total"] == reward["format"]
        assert pass_at_1(text, ADD_TESTS, timeout=T) == 0.0
    assert code_reward(answer("x = 1"), [], timeout=T)["correctness"] == 0.0


def test_exiting_before_the_tests_with_status_zero_fails():
    # The reward hack of plain exit-status harnesses: stop with status 0 before any test runs.
    for hack in ["import os; os._exit(0)", "import sys; sys.exit(0)", "raise SystemExit", "exit()"]:
        assert run_python(hack, timeout=T).passed  # exit status 0 ...
        assert pass_at_1(answer(hack), ADD_TESTS, timeout=T) == 0.0  # ... but the tests never ran
        assert code_reward(answer(hack), ADD_TESTS, timeout=T)["correctness"] == 0.0


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
    assert pass_at_1(answer(prompt + good), tests, timeout=T) == 1.0
    assert pass_at_1(answer(prompt + wrong), tests, timeout=T) == 0.0


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
    assert run_tests(good, [KODCODE_TESTS], timeout=T) == [True]
    first_pair_only = "def two_sum(nums, target):\n    return [0, 1]\n"  # fails test_negative
    assert run_tests(first_pair_only, [KODCODE_TESTS], timeout=T) == [False]
    # A program's own test_* helpers are not called: only the tests' functions are.
    assert run_tests(good + "def test_helper():\n    raise AssertionError\n", [KODCODE_TESTS], timeout=T) == [True]
    # The program is imported as module `solution`: its `if __name__ == "__main__":` block does not run.
    main_block = good + "if __name__ == '__main__':\n    print(two_sum(*map(int, input().split())))\n"
    assert run_tests(main_block, [KODCODE_TESTS], timeout=T) == [True]


def test_run_tests_parallel_keeps_order(monkeypatch):
    # Parallel, proven by a barrier the first three runs must all reach before any may start: run one at a
    # time, the first would wait there until the barrier's timeout and fail.
    barrier, real_run, calls = threading.Barrier(3, timeout=HANG), sandbox._run, []

    def run_after_barrier(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 3:
            barrier.wait()
        return real_run(*args, **kwargs)

    monkeypatch.setattr(sandbox, "_run", run_after_barrier)
    program = "import time\ndef f(x, delay):\n    time.sleep(delay)\n    return x\n"
    tests = ["assert f(1, 0.6) == 1", "assert f(1, 0.0) == 2", "assert f(3, 0.3) == 3", "assert f(4, 0.1) == 0",
             "assert f(5, 0.0) == 5"]
    assert run_tests(program, tests, timeout=T, workers=3) == [True, False, True, False, True]
    assert len(calls) == 5


# ----------------------------------------------------------------------------- hostile programs, both backends

def test_infinite_loop_and_sleep_time_out(backend):
    busy_sleep = "import time\nwhile True:\n    time.sleep(0.01)\n"
    for source in ["while True:\n    pass\n", "import time\ntime.sleep(60)\n", busy_sleep]:
        tag = marker()
        r = run_python(background(tag) + source, timeout=1, backend=backend)
        assert r.timed_out and not r.passed and r.returncode == -9 and r.backend == backend
        assert 1.0 <= r.seconds < 1.0 + HANG
        assert wait_dead(processes_mentioning(tag))
    loops = answer("def add(a, b):\n    while True:\n        pass")
    assert code_reward(loops, ADD_TESTS, timeout=1, backend=backend)["correctness"] == 0


def test_fork_bomb_is_contained_and_killed(backend):
    stubborn = "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    for bomb in ["while True:\n    os.fork()\n", stubborn]:
        tag = marker()
        r = run_python(background(tag) + "import os\n" + bomb, timeout=1, backend=backend)
        assert not r.passed and r.seconds < 1.0 + HANG
        assert wait_dead(processes_mentioning(tag))
    assert pass_at_1(answer("import os\nwhile True:\n    os.fork()"), ADD_TESTS, timeout=1, backend=backend) == 0.0


def test_process_limit(backend):
    # RLIMIT_NPROC. bwrap: at most max_processes processes and threads in the sandbox (per user namespace or
    # fresh uid). rlimit: at most max_processes more than the sandbox user already runs.
    source = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n"
              "        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint(n)\n")
    settle(backend)
    r = run_python(source, timeout=T, max_processes=8, backend=backend)
    assert r.passed and 0 < int(r.stdout) < 8


def test_memory_hog_fails_fast(backend):
    for source in ["x = bytearray(10**10)\n", "x = []\nwhile True:\n    x.append(bytearray(10**6))\n"]:
        r = run_python(source, timeout=T, memory_mb=256, backend=backend)
        assert not r.passed and not r.timed_out and "MemoryError" in r.stderr  # the limit, not the timeout, ended it


def test_memory_is_bounded_per_process_and_by_the_process_count(backend):
    # No cgroup: a bwrap sandbox holds at most max_processes x memory_mb. Children that each keep 100 MB (under
    # memory_mb=256) stop at the process cap; 300 MB in one child fails.
    source = """import os, select, time
r, w = os.pipe()
forks = 0
for size in [300] + [100] * 8:
    try:
        pid = os.fork()
    except OSError:
        break
    forks += 1
    if pid == 0:
        try:
            block = bytearray(size * 2**20)
            os.write(w, b"y")
        except MemoryError:
            os.write(w, b"n")
        time.sleep(60)
        os._exit(0)
os.close(w)
got = b""
while len(got) < forks and select.select([r], [], [], 30)[0]:
    got += os.read(r, 64)
print(forks, got.decode())
"""
    settle(backend)
    r = run_python(source, timeout=T, memory_mb=256, max_processes=4, backend=backend)
    assert r.passed, r.stderr
    forks, got = r.stdout.split()
    assert got.count("n") == 1 and got.count("y") == int(forks) - 1  # 300 MB refused, 100 MB fine
    if backend == "bwrap":  # with the parent at most 4 processes: the cap stopped the other forks
        assert 2 <= int(forks) <= 3
    else:  # a per-user cap: other processes of the user that end meanwhile free slots (and vice versa)
        assert int(forks) < 9


def test_huge_output_is_bounded(backend):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for source in ["print('x' * 10**8)\n", "while True:\n    print('y' * 1000)\n"]:
        r = run_python(source, timeout=T, max_output=1000, backend=backend)
        assert not r.passed and not r.timed_out  # RLIMIT_FSIZE, not the timeout, stopped the write
        assert len(r.stdout) == 1000 and len(r.stderr) <= 1000 and "File too large" in r.stderr
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: we read 1000 bytes


def test_file_size_is_limited(backend):
    source = ("import os\nf = open('big', 'wb')\ntry:\n    f.write(b'x' * 50 * 2**20)\nfinally:\n"
              "    f.flush()\n    print(os.path.getsize('big'), flush=True)\n")
    r = run_python(source, max_file_mb=10, timeout=T, backend=backend)
    assert not r.passed and "File too large" in r.stderr and int(r.stdout) <= 10 * 2**20


def test_child_processes_run_under_the_limits_and_do_not_outlive_the_run(backend):
    tag = marker()
    source = (
        "import os, subprocess\n"
        "print(subprocess.run(['sh', '-c', 'ulimit -v'], capture_output=True, text=True).stdout.strip())\n"
        f"subprocess.Popen(['sh', '-c', 'sleep 1000; : {tag}a'])\n"
        f"os.system('(sleep 1000; : {tag}b) &')\n")
    r = run_python(source, timeout=T, memory_mb=512, backend=backend)
    assert r.passed, r.stderr
    assert r.stdout.strip() == str(512 * 1024)  # KiB: the shell inherited RLIMIT_AS
    assert wait_dead(processes_mentioning(tag))


def test_setsid_escape_is_killed_with_a_network_namespace(backend):
    if not own_network_namespace(backend):
        pytest.skip("no network namespace here: under rlimit a setsid() process can outlive the run (documented)")
    tag = marker()
    source = f"import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 1000; : {tag}'], start_new_session=True)\n"
    r = run_python(source, timeout=T, backend=backend)
    assert r.passed and wait_dead(processes_mentioning(tag))


def test_network_is_cut_with_a_network_namespace(backend):
    if not own_network_namespace(backend):
        pytest.skip("no network namespace here: under rlimit the network is reachable (documented)")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n", timeout=T,
                       backend=backend)
    assert not r.passed and "Error" in r.stderr  # ENETUNREACH: only a loopback device, and it is down


def test_project_is_not_importable_and_environment_is_empty(backend, monkeypatch):
    monkeypatch.chdir(PROJECT)
    monkeypatch.setenv("PYTHONPATH", PROJECT)
    monkeypatch.setenv("SECRET_TOKEN", "x")
    for module in ("sandbox", "rewards"):
        r = run_python(f"import {module}\n", timeout=T, backend=backend)
        assert not r.passed and "ModuleNotFoundError" in r.stderr
    r = run_python(f"import json, os, sys\nassert {PROJECT!r} not in sys.path and '' not in sys.path\n"
                   "print(json.dumps(sorted(os.environ)))", timeout=T, backend=backend)
    assert r.passed, r.stderr
    names = json.loads(r.stdout)
    assert "SECRET_TOKEN" not in names and "HOME" not in names and "PYTHONPATH" not in names
    assert set(names) <= set(sandbox.ENV) | {"LC_CTYPE", "PWD"}  # Python may coerce the C locale; bwrap sets PWD


def test_limits_cannot_be_raised_and_root_is_dropped(backend):
    r = run_python("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n", timeout=T, backend=backend)
    assert not r.passed and "ValueError" in r.stderr
    r = run_python("import os\nprint(os.getuid(), os.geteuid())\nprint(open('/proc/self/status').read())\n",
                   timeout=T, backend=backend)
    assert r.passed
    uid, euid = map(int, r.stdout.split("\n", 1)[0].split())
    assert uid == euid != 0
    capabilities = {k: int(v, 16) for k, v in (line.split(":\t") for line in r.stdout.splitlines()[1:] if ":\t" in line)
                    if k in ("CapPrm", "CapEff", "CapAmb", "NoNewPrivs")}
    assert capabilities["NoNewPrivs"] == 1
    if backend == "bwrap":  # no capability at all; root: a fresh uid of its own, else 65534 in a user namespace
        assert capabilities["CapPrm"] == capabilities["CapEff"] == capabilities["CapAmb"] == 0
        assert uid >= 2**30 if os.geteuid() == 0 else uid == sandbox.SANDBOX_UID
    elif os.geteuid() == 0:  # rlimit as root: nobody, keeping only CAP_DAC_READ_SEARCH (read any file)
        assert uid == sandbox.SANDBOX_UID and capabilities["CapEff"] in (0, 1 << 2)


def test_rlimit_fallback_does_not_protect_files_outside_but_removes_its_folder():
    cwd = os.getcwd()
    outside = os.path.join("/tmp", f"{marker()}.txt")
    print_cwd = "import os\nprint(os.getcwd(), flush=True)\n"
    try:
        r = run_python(print_cwd + f"open({outside!r}, 'w').write('hello')\nopen('local.txt', 'w').write('ok')\n",
                       timeout=T, backend="rlimit")
        assert r.passed and open(outside).read() == "hello"  # NOT prevented: same user (or nobody) may write /tmp
    finally:
        if os.path.exists(outside):
            os.remove(outside)
    locked = "os.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nfor d in ['a/b', 'a', '.']:\n    os.chmod(d, 0)\n"
    for source in ("", locked):  # the second takes permissions off its own directories, cwd included
        r = run_python(print_cwd + source, timeout=T, backend="rlimit")
        assert r.passed
        workdir = r.stdout.splitlines()[0]
        assert workdir.startswith(os.path.join(os.path.realpath(tempfile.gettempdir()), "sandbox_"))
        assert not os.path.exists(workdir)
    assert os.getcwd() == cwd


# ----------------------------------------------------------------------------- isolation (bwrap only)

def test_secrets_are_unreadable_and_cannot_be_exfiltrated(isolated, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(marker())
    secret.chmod(0o600)
    dropped = f"/tmp/{marker()}"
    with socket.socket(socket.AF_UNIX) as path_server, socket.socket(socket.AF_UNIX) as abstract_server:
        path_server.bind(str(tmp_path / "s.sock"))
        abstract_name = "\0" + marker()
        abstract_server.bind(abstract_name)
        for server in (path_server, abstract_server):
            server.listen()
            server.setblocking(False)
        attempts = {
            "secret": f"open({str(secret)!r}).read()",
            "shadow": "open('/etc/shadow').read()",
            "home": f"os.listdir({os.path.expanduser('~')!r})",
            "root": "os.listdir('/root')",
            "project": f"os.listdir({PROJECT!r})",
            "socket": f"s = socket.socket(socket.AF_UNIX); s.connect({str(tmp_path / 's.sock')!r}); s.send(b'x')",
            "abstract": f"s = socket.socket(socket.AF_UNIX); s.connect({abstract_name!r}); s.send(b'x')",
            "drop": f"open({dropped!r}, 'w').write('leak'); os.chmod({dropped!r}, 0o666)",
        }
        source = "import os, socket\nout = {}\n" + "".join(
            f"try:\n    r = {code}\n    out[{name!r}] = r if isinstance(r, list) else repr(r)[:200]\n"
            "except Exception as e:\n"
            f"    out[{name!r}] = 'failed: ' + type(e).__name__\n" for name, code in attempts.items())
        r = run_python(source + "print(__import__('json').dumps(out))\n", timeout=T, backend=isolated)
        assert r.passed, r.stderr
        out = json.loads(r.stdout)
        failed = {name for name, value in out.items() if str(value).startswith("failed")}
        assert {"secret", "shadow", "project", "socket", "abstract"} <= failed, out
        # the home folder and /root exist in the sandbox only on the way to a bound Python installation
        on_the_way = {os.path.relpath(p, home).split("/")[0] for home in [os.path.expanduser("~"), "/root"]
                      for p in sandbox._python_dirs() if p.startswith(home + "/")}
        for name in ("home", "root"):
            assert name in failed or set(out[name]) <= on_the_way, (name, out[name])
        assert secret.read_text() not in r.stdout + r.stderr
        for server in (path_server, abstract_server):
            with pytest.raises(BlockingIOError):  # nobody connected
                server.accept()
    assert not os.path.exists(dropped)  # the sandbox's /tmp is its own


def test_no_daemon_survives(isolated):
    # Double fork, setsid, and a new user + network namespace: left both the process group and the old
    # namespace sweep. The sandbox's PID namespace holds it all the same.
    tag = marker()
    source = ("import ctypes, os, subprocess\n"
              "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        ctypes.CDLL(None).unshare(0x10000000 | 0x40000000)\n"
              f"        subprocess.Popen(['sh', '-c', 'sleep 1000; : {tag}'], start_new_session=True)\n"
              "        os._exit(0)\n    os._exit(0)\n"
              "import time\ntime.sleep(0.5)\n")
    r = run_python(source, timeout=T, backend=isolated)
    assert r.passed, r.stderr
    assert not processes_mentioning(tag)  # gone when run_python returns, not just soon after


def test_siblings_cannot_be_killed(isolated):
    # One program of a batch kills every process it can reach, while three correct ones are being graded.
    attacker = ("import os, signal, time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n"
                "    for pid in [-1, *range(1, 400)]:\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
                "        except OSError:\n            pass\n")
    good = "import time\ndef add(a, b):\n    time.sleep(1)\n    return a + b\n"
    programs = [attacker, good, good, good]
    threads_out = [None] * 4

    def grade_one(i):
        threads_out[i] = grade(programs[i], ["assert add(1, 2) == 3"], timeout=T, backend=isolated)[0]

    threads = [threading.Thread(target=grade_one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert threads_out == [False, True, True, True]


def test_no_file_is_left_anywhere(isolated):
    tag = marker()
    source = ("import os\nfor d in ['/tmp', '/dev/shm', '/var/tmp', '.']:\n    try:\n"
              f"        open(os.path.join(d, {tag!r}), 'w').write('x')\n    except OSError:\n        pass\n"
              f"os.makedirs({tag!r} + 'dir', exist_ok=True)\n"
              f"for i in range(3000):\n    open(os.path.join({tag!r} + 'dir', str(i)), 'w').close()\n"
              "print(len(os.listdir('.')))\n")
    r = run_python(source, timeout=T, backend=isolated)
    assert r.passed, r.stderr
    for folder in ("/tmp", "/dev/shm", "/var/tmp", tempfile.gettempdir()):
        if os.path.isdir(folder):
            assert not [name for name in os.listdir(folder) if tag in name], folder


# ----------------------------------------------------------------------------- reward hacks, both backends

WRONG_ADD = "def add(a, b):\n    return 0\n"
CHECK_ADD = ["def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n    pass\n\n"
             "check(add)\n"]
REWARD_HACKS = {  # each would get full reward from a harness that appends tests and a token to the program
    "re-exec under -O (asserts stripped)": "import os, sys\nif not sys.flags.optimize:\n"
                                           "    os.execv(sys.executable, [sys.executable, '-O', *sys.argv])\n"
                                           "def add(a, b):\n    assert False\n",
    "trace function jumping over asserts": WRONG_ADD + (
        "import sys, linecache\n"
        "def local(frame, event, arg):\n    if event == 'line':\n        n = frame.f_lineno\n"
        "        while linecache.getline(frame.f_code.co_filename, n).strip().startswith('assert'):\n"
        "            n += 1\n        if n != frame.f_lineno:\n            frame.f_lineno = n\n    return local\n"
        "sys.settrace(lambda frame, event, arg: local)\n"),
    "token read from the files": WRONG_ADD + (
        "import glob, os, re\nfound = set()\n"
        "for path in glob.glob('*') + glob.glob('/tmp/*') + [__file__, '/proc/self/cmdline', '/proc/self/environ']:\n"
        "    try:\n        found |= set(re.findall(rb'[0-9a-f]{32}', open(path, 'rb').read()))\n"
        "    except OSError:\n        pass\nfor token in found:\n    os.write(2, token)\nos._exit(0)\n"),
    "token read from code constants": WRONG_ADD + (
        "import gc, os, re, sys\nfound, frame = set(), sys._getframe()\ncodes = [o for o in gc.get_objects() "
        "if type(o).__name__ == 'code']\nwhile frame:\n    codes.append(frame.f_code)\n    frame = frame.f_back\n"
        "for code in codes:\n    for c in code.co_consts:\n"
        "        if isinstance(c, (str, bytes)) and re.fullmatch('[0-9a-f]{32}', c if isinstance(c, str) else "
        "c.decode('latin-1')):\n            found.add(c if isinstance(c, bytes) else c.encode())\n"
        "for token in found:\n    os.write(2, token)\nos._exit(0)\n"),
    "os._exit(0) when called": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "SkipTest when called": "import unittest\ndef add(a, b):\n    raise unittest.SkipTest('skip')\n",
    "always-equal object": "class Anything:\n    def __eq__(self, other):\n        return True\n"
                           "def add(a, b):\n    return Anything()\n",
    "unittest.mock.ANY": "from unittest.mock import ANY\ndef add(a, b):\n    return ANY\n",
    "int subclass equal to anything": "class Int(int):\n    def __eq__(self, other):\n        return True\n"
                                      "    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)\n",
}


@pytest.mark.parametrize("hack", list(REWARD_HACKS))
def test_reward_hacks_get_nothing(hack, backend):
    program = REWARD_HACKS[hack]
    tests = ["assert add(1, 2) == 3", "assert [add(2, 2)] == [4]"]  # the second: inside a list
    for style in (tests, CHECK_ADD):
        assert pass_at_1(answer(program), style, timeout=T, backend=backend) == 0.0
        assert code_reward(answer(program), style, timeout=T, backend=backend)["correctness"] == 0.0
    if "equal" in hack or "ANY" in hack:
        for test in tests:
            passed, r = grade(program, [test], timeout=T, backend=backend)
            assert not passed and "equals anything" in r.stderr


def test_contains_anything_gets_nothing(backend):
    program = "class Bag:\n    def __contains__(self, item):\n        return True\ndef f():\n    return Bag()\n"
    assert grade(program, ["assert 3 in f()"], timeout=T, backend=backend)[0] is False
    assert grade("def f():\n    return [1, 2, 3]\n", ["assert 3 in f()"], timeout=T, backend=backend)[0] is True


HONEST = """import collections, dataclasses, math
import numpy as np

@dataclasses.dataclass
class Point:
    x: int
    y: int

class Money:
    def __init__(self, cents):
        self.cents = cents
    def __eq__(self, other):
        return isinstance(other, Money) and self.cents == other.cents

def stats(xs):
    pair = collections.namedtuple("Pair", "a b")
    return {"mean": sum(xs) / len(xs), "points": [Point(x, x) for x in xs], "pair": pair(1, 2)}

def squares(n):
    return np.arange(n) ** 2

def gen():
    yield from range(10)
"""
HONEST_TESTS = [
    "assert stats([1, 3])['mean'] == 2.0",
    "assert stats([1])['points'] == [Point(1, 1)] and stats([1])['pair'] == (1, 2)",
    "assert Money(5) == Money(5) and not Money(5) == Money(6) and Money(5) in [Money(1), Money(5)]",
    "assert (squares(4) == np.array([0, 1, 4, 9])).all() and squares(3).tolist() == [0, 1, 4]",
    "import pytest\nassert 0.1 + 0.2 == pytest.approx(0.3) and math.isclose(stats([1, 2])['mean'], 1.5)",
    "assert 5 in gen() and 'b' in 'abc' and 2 in {2: 'x'} and [1, [2, {3: (4,)}]] == [1, [2, {3: (4,)}]]",
    "assert float('nan') != float('nan') and None == None and {1, 2} == {2, 1}",
]


def test_honest_comparisons_still_pass(backend):
    # The always-equal check leaves honest objects alone: numpy arrays, dataclasses, custom __eq__, approx,
    # generators (never drained by the check), nested containers.
    passed, r = grade(HONEST, HONEST_TESTS, timeout=T, backend=backend)
    assert passed, r.stderr
    assert run_tests(HONEST, HONEST_TESTS, timeout=T, backend=backend) == [True] * len(HONEST_TESTS)


# ----------------------------------------------------------------------------- choosing a backend

def test_backend_choice(monkeypatch):
    monkeypatch.setenv("D1_SANDBOX", "rlimit")
    assert sandbox.choose_backend() == "rlimit" and run_python("pass", timeout=T).backend == "rlimit"
    monkeypatch.setenv("D1_SANDBOX", "docker")
    with pytest.raises(ValueError, match="D1_SANDBOX"):
        sandbox.choose_backend()
    monkeypatch.delenv("D1_SANDBOX")
    assert sandbox.default_backend() == ("bwrap" if os.geteuid() == 0 else "auto")  # root: isolation required
    problem = f"no bwrap in this test ({marker()})"
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: problem)
    with pytest.raises(RuntimeError, match="isolation is required"):
        run_python("pass", timeout=T, backend="bwrap")
    with pytest.warns(UserWarning, match="does not isolate"):  # once, naming what is not protected
        assert run_python("pass", timeout=T, backend="auto").backend == "rlimit"
    assert sandbox.choose_backend("auto") == "rlimit"
