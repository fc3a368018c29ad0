"""Run model-written Python against unit tests in a separate, resource-limited process (Linux 5.3+ only).

This is the reward for the coding task (KodCode RL training) and the pass@1 check for HumanEval/MBPP.
Each program runs in a fresh `python -I` process with an almost empty environment, its own empty
temporary directory as cwd (deleted afterwards), stdin from /dev/null, its own process group, and
resource limits set before exec: CPU seconds, address space, size of any file it writes, number of
processes, no core dumps. Output goes to unnamed files; the first `max_output` bytes of stdout and the
last of stderr are read back. At the timeout, and at the end of every run, the whole process group is
killed. Where the kernel allows it, the program also gets its own network namespace (only a loopback
device, which is down; for a non-root caller inside a new user namespace, where the program sees its
uid as 65534), and every process left in that namespace is killed too, including ones that left the
process group. If the caller is root, the program runs as user `nobody` instead, because the kernel
does not apply RLIMIT_NPROC to root and root could raise its own limits; where the kernel allows, it
keeps CAP_DAC_READ_SEARCH (read any file) and no other capability, because the interpreter often lives
under /root. All model code runs in the child: this module never calls exec or eval on it.

What it does NOT protect against: it is a process with resource limits, not a container or a VM. There
is no syscall filtering. The network is reachable unless a network namespace could be created (it can
as root with CAP_SYS_ADMIN, or as another user where unprivileged user namespaces are allowed; it cannot
in a default Docker container). The program runs as the calling user (as `nobody` when the caller is
root), so it can read every file the caller can read (root: every file) and write wherever that user
may write, outside its temporary directory too (/tmp, for instance); RLIMIT_FSIZE caps each file, not
the total written. The project is not on its import path, but nothing stops it from reading its files.
It can signal every process of its user: other sandboxes running at the same time and, when the caller
is not root, the caller itself (the training job). Without a network namespace, a process that calls
setsid() leaves the process group and can outlive the run. A program that reads its own source can
forge the end-of-tests token that run_tests and pass_at_1 check, so the verdict resists accidental and
simple reward hacks (sys.exit(0) before the tests), not deliberate ones. For hostile code, use a
container or a VM.
"""
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import math
import os
import re
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

SANDBOX_UID = 65534  # "nobody": who the program runs as when the caller is root
# PATH so that shell commands resolve the same way everywhere; numeric libraries single-threaded so that
# they fit in the process and memory limits. Nothing else: no HOME, no tokens, no PYTHON* variables.
ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FORMAT_BONUS = 0.1  # code_reward's "format" term: the code block is inside <answer>...</answer>

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 8, 38, 47, 2
_CAP_DAC_READ_SEARCH, _LINUX_CAPABILITY_VERSION_3 = 2, 0x20080522


@dataclasses.dataclass
class Result:
    returncode: int  # negative: killed by that signal (-9 after a timeout)
    stdout: str  # the first max_output bytes, decoded
    stderr: str  # the last max_output bytes, decoded
    timed_out: bool
    passed: bool  # returncode == 0 and not timed_out
    seconds: float


# ----------------------------------------------------------------------------- inside the child, before exec

def _prctl(*args: int) -> int:
    return _libc.prctl(*(ctypes.c_ulong(a) for a in args))


class _CapHeader(ctypes.Structure):  # capset(2)
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _keep_only_read_search() -> None:
    """After setuid with KEEPCAPS: keep CAP_DAC_READ_SEARCH (and nothing else) across exec, as an ambient
    capability. If the kernel refuses, the program gets no capability at all, and the interpreter must then be
    readable by SANDBOX_UID (run_python says so if it is not)."""
    bit = 1 << _CAP_DAC_READ_SEARCH
    data = (_CapData * 2)((bit, bit, bit), (0, 0, 0))
    if _libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data) == 0:
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, 0, 0)


def _enter_sandbox(limits: dict[int, int], nproc: int, drop_to: int | None) -> None:
    """preexec_fn: runs in the forked child before exec. The Python docs warn that preexec_fn can deadlock
    when the parent has threads (run_tests) if it touches a lock another thread held; this one only makes
    system calls on values computed in the parent: no imports, no I/O, no locks."""
    # Best effort: a network namespace of our own. Must happen while we still have the privileges.
    if _libc.unshare(_CLONE_NEWNET) != 0 and drop_to is None:
        _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)  # unprivileged users: inside a new user namespace
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))  # soft = hard: the program cannot raise them again
    if drop_to is not None:
        _prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
        os.setgroups([])
        os.setgid(drop_to)
        os.setuid(drop_to)
        _keep_only_read_search()
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries (sudo, su) get no privileges from exec
    # Last, after setuid: the kernel checks RLIMIT_NPROC for the new user, and would fail the exec if we
    # lowered it first and that user already ran more processes than the limit.
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


# ----------------------------------------------------------------------------- in the parent

def _count_tasks(uid: int) -> int:
    """Processes + threads of `uid`: what RLIMIT_NPROC counts (per user, not per process tree)."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # the process may exit while we look
            if os.stat(f"/proc/{pid}").st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
    return n


def _clamp(which: int, value: int) -> int:
    """A non-root caller cannot give a child more than its own hard limit (setrlimit would fail)."""
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _limits(timeout: float, memory_mb: int, max_file_mb: int) -> dict[int, int]:
    wanted = {
        resource.RLIMIT_CPU: math.ceil(timeout) + 1,  # CPU seconds, per process; the wall clock is enforced separately
        resource.RLIMIT_AS: memory_mb * 2**20,
        resource.RLIMIT_FSIZE: max_file_mb * 2**20,  # bigger writes fail with EFBIG (also stdout/stderr)
        resource.RLIMIT_CORE: 0,
    }
    return {which: _clamp(which, value) for which, value in wanted.items()}


def _netns(pid: int) -> str | None:
    with contextlib.suppress(OSError):  # gone, or not ours to inspect
        return os.readlink(f"/proc/{pid}/ns/net")
    return None


def _private_netns(pid: int) -> str | None:
    """The child's network namespace if it got one of its own (unshare worked), else None."""
    netns = _netns(pid)
    return netns if netns != _netns(os.getpid()) else None


def _kill_all(proc: subprocess.Popen, netns: str | None) -> None:
    """SIGKILL the program's process group and everything in its private network namespace, then reap.
    Called while the child is still unreaped, so its pid (= process group id) cannot have been reused."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # one atomic signal to the group: a forking loop cannot outrun it
    proc.wait()
    for _ in range(100) if netns else ():  # processes that left the group with setsid(); repeat while they fork
        pids = [pid for pid in filter(str.isdigit, os.listdir("/proc")) if _netns(int(pid)) == netns]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.01)


def _wait(pid: int, timeout: float) -> bool:
    """Wait until the process exits or `timeout` seconds pass; True on timeout. Waits on a pidfd, which does
    not reap the child (see _kill_all)."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()  # poll, not select: the caller may hold more than 1024 file descriptors
        poller.register(fd, select.POLLIN)
        return not poller.poll(timeout * 1000)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):  # the program took permissions off its own directories (same user): restore
        os.chmod(path, 0o700)
        for root, dirs, _ in os.walk(path):  # top-down: a directory is fixed before the walk enters it
            for d in dirs:
                if not os.path.islink(os.path.join(root, d)):
                    os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        warnings.warn(f"sandbox: could not remove {path}")


def _read(f, max_output: int, tail: bool = False) -> str:
    f.seek(max(0, f.seek(0, os.SEEK_END) - max_output) if tail else 0)
    return f.read(max_output).decode("utf-8", errors="replace")


def _start(prog: str, out, err, preexec, drop_to: int | None) -> subprocess.Popen:
    # -I: no user site-packages, PYTHON* variables ignored, neither cwd nor the script's dir on sys.path.
    # Not -S: tests may import pytest or numpy from the interpreter's own site-packages.
    try:
        return subprocess.Popen([sys.executable, "-I", prog], cwd=os.path.dirname(prog), env=ENV,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                                start_new_session=True, preexec_fn=preexec)
    except PermissionError as e:
        if drop_to is None:
            raise
        raise PermissionError(f"user {drop_to} cannot run {sys.executable}; make its directories readable by "
                              "others (chmod o+rx) or run as a non-root user") from e


def run_python(source: str, *, timeout: float = 5.0, memory_mb: int = 1024, max_output: int = 64_000,
               max_file_mb: int = 10, max_processes: int = 32) -> Result:
    """Run `source` as a script in a sandboxed `python -I` process (see the module docstring).
    max_processes: how many more processes/threads than the sandbox user already runs the program may have."""
    drop_to = SANDBOX_UID if os.geteuid() == 0 else None
    uid = os.getuid() if drop_to is None else drop_to
    nproc = _clamp(resource.RLIMIT_NPROC, _count_tasks(uid) + max_processes)
    preexec = functools.partial(_enter_sandbox, _limits(timeout, memory_mb, max_file_mb), nproc, drop_to)
    workdir = tempfile.mkdtemp(prefix="sandbox_")
    start = time.monotonic()
    try:
        prog = os.path.join(workdir, "prog.py")
        with open(prog, "w", encoding="utf-8", errors="surrogatepass") as f:  # bad text fails in the child
            f.write(source)
        if drop_to is not None:
            os.chown(workdir, drop_to, drop_to)
            os.chown(prog, drop_to, drop_to)
        # Output goes to unnamed files, bounded by RLIMIT_FSIZE, not to pipes we would have to drain.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = _start(prog, out, err, preexec, drop_to)
            netns = _private_netns(proc.pid)
            try:
                timed_out = _wait(proc.pid, timeout)
            finally:  # also on KeyboardInterrupt: nothing may outlive the run
                _kill_all(proc, netns)
            # stderr: the end, where the traceback that explains a failure is
            stdout, stderr = _read(out, max_output), _read(err, max_output, tail=True)
    finally:
        _remove_tree(workdir)
    returncode = proc.returncode
    return Result(returncode, stdout, stderr, timed_out, returncode == 0 and not timed_out, time.monotonic() - start)


# ----------------------------------------------------------------------------- tests and rewards

# One optional "[ \t]*" after the language (never two adjacent ones): no backtracking on long runs of spaces.
_FENCE = re.compile(r"```[ \t]*(?:(?:python3?|py)[ \t]*)?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_TEST_FUNCTION = re.compile(r"^def (test_\w*)\s*\(", re.MULTILINE)


def _answer_blocks(text: str) -> list[str]:
    """The contents of every complete <answer>...</answer>, in one linear scan (a regex rescans to the end
    for each unclosed <answer>: quadratic on adversarial text)."""
    blocks, pos = [], 0
    while (start := text.find("<answer>", pos)) != -1:
        end = text.find("</answer>", start + 8)
        if end == -1:  # no later <answer> can close either
            break
        blocks.append(text[start + 8:end])
        pos = end + 9
    return blocks


def _find_code(completion: str) -> tuple[str | None, bool]:
    """(code, whether it came from inside <answer>...</answer>); see extract_code."""
    for text in reversed(_answer_blocks(completion)):
        if blocks := _FENCE.findall(text):
            return blocks[-1], True
    blocks = _FENCE.findall(completion)
    return (blocks[-1] if blocks else None), False


def extract_code(completion: str) -> str | None:
    """The last ```python (or bare ```) block, taken from the last <answer>...</answer> that has one if any
    does; None if there is no complete block."""
    return _find_code(completion)[0]


def _test_script(program: str, tests: list[str], token: str) -> str:
    """program + tests as one script that ends by writing `token` to stderr. KodCode-style tests
    (`from solution import f`, `def test_x(): ...`) work because `solution` is made an alias of the script
    itself and each top-level test_* function of the tests is called; plain asserts and HumanEval's
    `check(candidate)` + `check(f)` simply run."""
    parts = [program, '__import__("sys").modules["solution"] = __import__("sys").modules[__name__]']
    for test in tests:
        parts += [test, *(f"{name}()" for name in _TEST_FUNCTION.findall(test))]
    parts.append(f'__import__("os").write(2, b"{token}")')
    return "\n\n".join(parts) + "\n"


def _run_tests_together(program: str, tests: list[str], **limits) -> bool:
    """Exit status 0 alone is not a pass: a program that calls sys.exit(0) or os._exit(0) before the tests run
    would get full reward (an easy reward hack in RL). The script must also reach its last line, which writes a
    fresh random token. (A program that reads its own source could still forge it: see the module docstring.)"""
    token = secrets.token_hex(16)
    result = run_python(_test_script(program, tests, token), **limits)
    return result.passed and token in result.stderr


def run_tests(program: str, tests: list[str], *, timeout: float = 5.0, workers: int = 4, **limits) -> list[bool]:
    """Run `program` with each test in its own sandboxed process, `workers` at a time; verdicts in test order.
    `limits`: the other keyword arguments of run_python."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda test: _run_tests_together(program, [test], timeout=timeout, **limits), tests))


def code_reward(completion: str, tests: list[str], **limits) -> dict[str, float]:
    """Coding reward: "correctness" = fraction of tests passed (0 without a code block or tests), "format" =
    FORMAT_BONUS (0.1) if the code block sits inside <answer>...</answer>, "total" = their sum.
    `limits`: keyword arguments of run_tests / run_python. Never raises on any completion string."""
    code, in_answer = _find_code(completion)
    verdicts = run_tests(code, tests, **limits) if code is not None and tests else []
    correctness = sum(verdicts) / len(tests) if verdicts else 0.0
    fmt = FORMAT_BONUS if in_answer else 0.0
    return {"correctness": correctness, "format": fmt, "total": correctness + fmt}


def pass_at_1(completion: str, tests: list[str], **limits) -> float:
    """1.0 iff the completion has a code block and the program passes ALL tests, run together in ONE process
    (the HumanEval/MBPP harness), else 0.0. `limits`: keyword arguments of run_python."""
    code = extract_code(completion)
    if code is None:
        return 0.0
    return float(_run_tests_together(code, tests, **limits))
