"""Run model-written Python against unit tests in an isolated, resource-limited sandbox (Linux only).

This is the reward for the coding task (KodCode RL training) and the pass@1 check for HumanEval/MBPP. All model
code runs in the sandbox: this module never calls exec or eval on it. Two backends; README.md ("The coding task")
has the threat table: each attack, what holds under which backend, and the test that shows it.

bwrap (bubblewrap 0.5+; Linux 5.14+ for non-root callers, whose process cap is counted per user namespace from then
on): each run gets its own PID, mount, network, IPC and UTS namespaces. Its filesystem is empty but for read-only
binds of /usr and the Python installation (prefixes and the folders `python -I` puts on sys.path: no home folder, no
project, no /etc but the loader cache), a new /proc and /dev, and size-capped private tmpfs folders /tmp (the
working folder) and /dev/shm that vanish with the run. There is no network device, no process outside the sandbox is
visible or signallable, and the program has no capability. A non-root caller gets a user namespace (the program is
uid 65534 inside, the caller outside); a root caller does not, since the kernel exempts the host's root user from
RLIMIT_NPROC even inside one: the harness switches to a fresh random uid instead. Either way RLIMIT_NPROC counts
this sandbox's processes only. The run ends by killing the namespace's init, which takes every process in it along
(double forks and setsid() included): when a run returns, nothing of it is left.

rlimit (fallback, where bwrap is missing or namespaces are not allowed): a `python -I` process in its own process
group and temporary folder (deleted afterwards), with the same resource limits, its own network namespace where
the kernel allows one, and user `nobody` when the caller is root. It does NOT isolate: the program can read
every file the caller can (as root: every file, since `nobody` keeps a read-any-file capability to reach the
interpreter), write outside its folder, and signal every process of its user (other sandboxes; the caller too
when not root).

D1_SANDBOX picks the backend: "auto" (bwrap where it works, else rlimit with one warning naming what is not
protected), "bwrap" (refuse to run without it), "rlimit". Default: "bwrap" for root, whose fallback can read
every secret on the machine, and "auto" for other users. run_python and friends take backend= too.

Both backends set, before the program starts: limits on CPU seconds, address space (per process), size of each file
written, open files, processes and core dumps; a wall-clock timeout; an almost empty environment, stdin from
/dev/null, no inherited file descriptors. Memory is bounded per process, not per sandbox (no cgroup is used): at
most max_processes x memory_mb of address space, plus the two tmpfs folders and open files x file size.

Verdicts come from a trusted harness (_HARNESS), the first code that runs in the sandbox: it reads its job (the
tests and a fresh random token) from a file it then deletes, compiles the tests itself (asserts kept even under
`python -O`), makes sys.settrace and the other tracing hooks raise, imports the program as module `solution`,
runs the tests, and writes the token to stderr only after the last one returned. The token is in no file and in
no code object the program can read. A passing `==` or `in` inside a test's assert fails the test if an object
involved equals a fresh object() (an "always equal" __eq__). What the harness cannot stop, since the program
runs in its process: code written against this harness that digs the token out of the interpreter's memory, or
patches what the tests call; see README.md.

Longer than ~650 lines, on purpose: security code is read as a whole; the trusted harness, the two backends and
the cleanup that make the threat table true are kept in one file where a reviewer can check them together.
"""
import argparse
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import resource
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

SANDBOX_UID = 65534  # "nobody": the program's uid inside a bwrap user namespace, and the fallback's user for root
# PATH so that shell commands resolve the same way everywhere; numeric libraries single-threaded so that
# they fit in the process and memory limits. Nothing else: no HOME, no tokens, no PYTHON* variables.
ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FORMAT_BONUS = 0.1  # code_reward's "format" term: the code block is inside <answer>...</answer>
BACKENDS = ("auto", "bwrap", "rlimit")  # values of D1_SANDBOX and of backend=
MAX_OPEN_FILES = 256  # RLIMIT_NOFILE: also bounds memory held in memfds and pipes (each file <= max_file_mb)

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 8, 38, 47, 2
_CAP_DAC_READ_SEARCH, _LINUX_CAPABILITY_VERSION_3 = 2, 0x20080522


@dataclasses.dataclass
class Result:
    returncode: int  # negative: killed by that signal (-9 after a timeout); under bwrap, 128 + N for signal N
    stdout: str  # the first max_output bytes, decoded
    stderr: str  # the last max_output bytes, decoded
    timed_out: bool
    passed: bool  # returncode == 0 and not timed_out
    seconds: float
    backend: str = ""  # "bwrap" or "rlimit"


# ----------------------------------------------------------------------------- the harness (runs in the sandbox)

_HARNESS = r'''"""Trusted harness: the first code that runs in the sandbox (written there by sandbox.py, which see).

Reads its job from job.json and deletes the file, so nothing the program runs can read the job (its token, its
tests) again; becomes an unprivileged user and caps the sandbox's process count where the job says; then either
runs prog.py as __main__ (mode "script") or imports solution.py as module `solution`, runs each test in that
module's namespace and writes the job's token to stderr once every test has returned (mode "tests")."""
import json
import os
import resource
import sys

CHECK = "__sandbox_check__"  # the name by which the tests' rewritten comparisons call check()
PLAIN = frozenset({bool, int, float, complex, str, bytes, type(None)})  # their == is the builtin one
SENTINEL = object()  # a fresh object: nothing honest compares equal to it


def rigged(value) -> bool:
    """True if `value` is, or holds inside lists, tuples, sets or dicts, an object that equals SENTINEL: an
    "always equal" object whose __eq__ ignores its argument (hand-written, or unittest.mock.ANY)."""
    stack, seen = [value], set()
    while stack:
        x = stack.pop()
        if type(x) in PLAIN or id(x) in seen:
            continue
        seen.add(id(x))
        try:
            if x == SENTINEL:
                return True
        except Exception:  # e.g. a numpy array: an elementwise answer has no truth value and is no always-equal
            pass
        if issubclass(type(x), dict):
            stack += [*x.keys(), *x.values()]
        elif issubclass(type(x), (list, tuple, set, frozenset)) and not PLAIN.issuperset(map(type, x)):
            stack += x
    return False


def contains_anything(container) -> bool:
    """True if `container` claims to hold SENTINEL (only types with __contains__: an iterator is never drained)."""
    try:
        return hasattr(type(container), "__contains__") and SENTINEL in container
    except Exception:  # e.g. `x in "text"` with a non-string x
        return False


def check(a, b, is_in):
    """`a in b` or `a == b` as a test's assert wrote it; if it holds only thanks to an object that equals
    anything, the test fails instead."""
    result = a in b if is_in else a == b
    try:
        holds = bool(result)
    except Exception:  # e.g. numpy arrays: the test decides what to do with the elementwise answer
        return result
    if holds and (rigged(a) or (contains_anything(b) if is_in else rigged(b))):
        raise AssertionError("this comparison holds only because an object equals anything (an always-equal "
                             "__eq__ or __contains__): not a pass")
    return result


def compile_test(source, filename):
    """(code, names of its top-level test_* functions): asserts kept whatever the -O level, and `a == b` and
    `a in b` inside assert statements routed through check()."""
    import ast

    class Rewrite(ast.NodeTransformer):
        in_assert = False

        def visit_Assert(self, node):
            self.in_assert = True
            self.generic_visit(node)
            self.in_assert = False
            return node

        def visit_Compare(self, node):
            self.generic_visit(node)
            if not self.in_assert or len(node.ops) != 1 or not isinstance(node.ops[0], (ast.Eq, ast.In)):
                return node
            args = [node.left, node.comparators[0], ast.Constant(isinstance(node.ops[0], ast.In))]
            return ast.copy_location(ast.Call(ast.Name(CHECK, ast.Load()), args, []), node)

    tree = ast.fix_missing_locations(Rewrite().visit(ast.parse(source, filename)))
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    return compile(tree, filename, "exec", dont_inherit=True, optimize=0), list(dict.fromkeys(names))


def refuse(*args, **kwargs):
    raise RuntimeError("tracing, profiling and monitoring hooks are disabled while tests run")


def run_tests(tests, token):
    import importlib.util
    import linecache

    compiled = []
    for i, source in enumerate(tests):  # before the program runs, which never sees the tests' text
        filename = f"<test {i}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # for tracebacks
        compiled.append(compile_test(source, filename))
    # A trace function can jump over a test's lines: none can be installed from here on.
    sys.settrace = sys.setprofile = refuse
    for name in ("_settraceallthreads", "_setprofileallthreads"):  # Python 3.12+
        if hasattr(sys, name):
            setattr(sys, name, refuse)
    if hasattr(sys, "monitoring"):  # Python 3.12+
        for name in ("use_tool_id", "register_callback", "set_events", "set_local_events"):
            setattr(sys.monitoring, name, refuse)
    spec = importlib.util.spec_from_file_location("solution", os.path.abspath("solution.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["solution"] = module  # KodCode's tests: `from solution import f`
    spec.loader.exec_module(module)
    namespace = vars(module)  # HumanEval's and MBPP's tests use the program's names directly
    for code, names in compiled:
        namespace[CHECK] = check
        exec(code, namespace)
        for test in [namespace[name] for name in names]:  # all taken first: a test cannot swap the next one
            test()
    sys.stdout.flush()
    os.write(2, token.encode())


def main():
    with open("job.json", encoding="utf-8") as f:
        job = json.load(f)
    os.unlink("job.json")
    uid, nproc = job["uid"], job["nproc"]
    if uid is not None:  # root without a user namespace: become a fresh user, which drops every capability
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if nproc is not None:  # counted per user namespace (or per fresh uid): this sandbox's processes only
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if job["mode"] == "script":
        import runpy
        sys.argv = ["prog.py"]
        runpy.run_path("prog.py", run_name="__main__")
        return
    try:
        run_tests(job["tests"], job.pop("token"))
    except BaseException:  # SystemExit too: print why (with the tests' source lines), and no token
        import traceback
        traceback.print_exc()
        sys.exit(1)


main()
'''


# ----------------------------------------------------------------------------- choosing a backend

def default_backend() -> str:
    """D1_SANDBOX if set; else "bwrap" (isolation required) for root, "auto" for other users."""
    choice = os.environ.get("D1_SANDBOX") or ("bwrap" if os.geteuid() == 0 else "auto")
    if choice not in BACKENDS:
        raise ValueError(f"D1_SANDBOX={choice!r}; expected one of {', '.join(BACKENDS)}")
    return choice


def choose_backend(choice: str | None = None) -> str:
    """The backend a run with backend=`choice` uses: "bwrap" where it works here; for "auto", else "rlimit" (with
    one warning); for "bwrap", else RuntimeError. None: default_backend()."""
    choice = choice or default_backend()
    if choice not in BACKENDS:
        raise ValueError(f"backend={choice!r}; expected one of {', '.join(BACKENDS)}")
    if choice == "rlimit":
        return "rlimit"
    if (problem := bwrap_problem()) is None:
        return "bwrap"
    if choice == "bwrap":
        raise RuntimeError(f"sandbox: isolation is required but bwrap cannot run here: {problem}. Install bubblewrap "
                           "(apt-get install bubblewrap), or set D1_SANDBOX=auto to run model code in the rlimit "
                           "fallback, which does not isolate it (README.md, 'The coding task').")
    _warn_unisolated(problem)
    return "rlimit"


@functools.cache
def _warn_unisolated(problem: str) -> None:
    warnings.warn(f"sandbox: bwrap cannot run here ({problem}); model code runs in the rlimit fallback, which does "
                  "not isolate it: it can read every file this user can read (as root: every file), write outside "
                  "its folder, signal this user's processes (other sandboxes, and this job unless root), and reach "
                  "the network where no network namespace can be made. Set D1_SANDBOX=bwrap to refuse instead.",
                  stacklevel=4)


@functools.cache
def _bwrap_options() -> frozenset[str]:
    """The options this bwrap knows (they grew over versions)."""
    usage = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=60)
    return frozenset(re.findall(r"^\s+(--[a-z0-9-]+)", usage.stdout + usage.stderr, re.MULTILINE))


@functools.cache
def bwrap_problem() -> str | None:
    """Why the bwrap backend cannot run here, or None if it can: checked once per process, by grading a tiny
    program in it."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed"
    try:
        if "--perms" not in _bwrap_options():
            return "this bwrap is too old (0.5 or later has --perms)"
        limits = dict(timeout=60.0, memory_mb=1024, max_file_mb=10, max_processes=16)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            job = {"mode": "tests", "tests": ["assert f() == 1"], "token": "ok"}
            returncode, _ = _run_bwrap({"solution.py": "def f():\n    return 1\n"}, job, out, err, **limits)
            stderr = _read(err, 4000, tail=True)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    if returncode != 0 or not stderr.endswith("ok"):
        return f"a test program failed in it (exit status {returncode}): {stderr.strip()[-500:]}"
    return None


# ----------------------------------------------------------------------------- the bwrap backend

@functools.cache
def _python_dirs() -> tuple[str, ...]:
    """The Python installation to bind: the interpreter's prefixes and the folders `python -I` puts on sys.path
    (standard library, site-packages), outermost only, outside /usr (bound whole), never / or the home folder."""
    probe = subprocess.run([sys.executable, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"], env=ENV,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=True)
    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable),
             *json.loads(probe.stdout)}
    never = {"/", os.path.realpath(os.path.expanduser("~"))}
    outer = ["/usr"]
    for path in sorted({os.path.normpath(p) for p in paths if p and os.path.exists(p)}):  # parents first
        if os.path.realpath(path) not in never and not any(path == q or path.startswith(q + "/") for q in outer):
            outer.append(path)
    return tuple(outer[1:])


@functools.cache
def _filesystem_argv() -> tuple[str, ...]:
    """bwrap options for the read-only part of the sandbox's filesystem."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # merged /usr: symlinks into it
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]  # where the loader finds shared libraries
    made = set()
    for path in _python_dirs():
        parents = []
        parent = os.path.dirname(path)
        while parent != "/" and parent not in made:
            parents.append(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        for parent in reversed(parents):  # folders on the way, mode 0755 (the host's /root is 0700)
            argv += ["--dir", parent]
        argv += ["--ro-bind", path, path]
    return tuple(argv)


def _bwrap_argv(files: dict[str, int], info_fd: int, as_root: bool, tmpfs_bytes: int) -> list[str]:
    """The bwrap command line: `files` maps names in /tmp to file descriptors whose contents bwrap copies there."""
    options = _bwrap_options()
    argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:
        # No user namespace: inside one the program would still be the host's root user, whom the kernel exempts
        # from RLIMIT_NPROC. The harness keeps these two capabilities just long enough to switch to a fresh uid.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        argv += ["--disable-userns"] if "--disable-userns" in options else []  # bwrap 0.8+: no nested ones
    argv += _filesystem_argv()
    size = ["--size", str(tmpfs_bytes)] if "--size" in options else []  # bwrap 0.7+; else up to half the RAM
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/dev/shm",
             "--perms", "1777", *size, "--tmpfs", "/tmp"]
    for name, fd in files.items():
        argv += ["--file", str(fd), f"/tmp/{name}"]
    argv += ["--chdir", "/tmp", "--info-fd", str(info_fd), "--clearenv"]
    for name, value in ENV.items():
        argv += ["--setenv", name, value]
    return argv + ["--", sys.executable, "-I", "/tmp/harness.py"]


def _parent_pid(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])  # after "(comm)", which may itself contain ")"
    return None


def _sandbox_init(proc: subprocess.Popen, info_fd: int, timeout: float) -> int | None:
    """A pidfd of the sandbox's init (bwrap reports its pid on --info-fd), or None if bwrap did not get that far.
    Killing init kills every process of the sandbox's PID namespace; a pidfd cannot hit a recycled pid."""
    data, poller, deadline = b"", select.poll(), time.monotonic() + timeout
    poller.register(info_fd, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0 and poller.poll(left * 1000):
        if not (chunk := os.read(info_fd, 4096)):
            break
        data += chunk
    try:
        pid = json.loads(data)["child-pid"]
        fd = os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, ProcessLookupError):
        return None
    if _parent_pid(pid) != proc.pid:  # init already exited and its pid was reused: not ours to kill
        os.close(fd)
        return None
    return fd


def _kill_bwrap(proc: subprocess.Popen, init_fd: int | None) -> None:
    """SIGKILL the sandbox's init, wait until it is gone, and reap bwrap. bwrap itself may exit as soon as the
    program does, but init exits only after every other process of its PID namespace: when this returns,
    nothing of the run is left."""
    if init_fd is None:
        proc.kill()  # bwrap failed before reporting init; --die-with-parent kills init if there is one
    else:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
        if not _poll(init_fd, 60):  # 60 s: only a hang-catch; this takes milliseconds
            warnings.warn("sandbox: the sandbox's init did not exit within 60 s of SIGKILL")
        os.close(init_fd)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # never seen; a hang here must not hang training
        proc.kill()
        proc.wait()


def _memfd(name: str, text: str) -> int:
    fd = os.memfd_create(name)
    with open(fd, "wb", closefd=False) as f:
        f.write(text.encode("utf-8", errors="surrogatepass"))  # bad text fails in the sandbox, not here
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run_bwrap(files: dict[str, str], job: dict, out, err, *, timeout: float, memory_mb: int, max_file_mb: int,
               max_processes: int) -> tuple[int, bool]:
    """Run the harness with `files` in /tmp under bwrap; (exit status, timed out)."""
    as_root = os.geteuid() == 0
    # root: a fresh uid per run, so RLIMIT_NPROC (per user) counts this sandbox only; 2**30..2**31, far from
    # the uids and subuid ranges of real users
    job = {**job, "nproc": max_processes, "uid": 2**30 + secrets.randbelow(2**30) if as_root else None}
    fds = {name: _memfd(name, text) for name, text in {"harness.py": _HARNESS, **files,
                                                        "job.json": json.dumps(job)}.items()}
    info_r, info_w = os.pipe()
    try:
        argv = _bwrap_argv(fds, info_w, as_root, tmpfs_bytes=4 * max_file_mb * 2**20)
        preexec = functools.partial(_set_limits, _limits(timeout, memory_mb, max_file_mb))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                                pass_fds=(info_w, *fds.values()), start_new_session=True, preexec_fn=preexec)
        os.close(info_w)
        info_w = -1
        init = None
        try:
            init = _sandbox_init(proc, info_r, timeout)
            timed_out = _wait(proc.pid, timeout)
        finally:  # also on KeyboardInterrupt: nothing may outlive the run
            _kill_bwrap(proc, init)
    finally:
        for fd in [info_r, *fds.values()] + ([info_w] if info_w >= 0 else []):
            os.close(fd)
    return (-signal.SIGKILL if timed_out else proc.returncode), timed_out


# ----------------------------------------------------------------------------- the rlimit fallback: in the child

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


def _set_limits(limits: dict[int, int]) -> None:
    """preexec_fn of both backends: runs in the forked child before exec. The Python docs warn that preexec_fn
    can deadlock when the parent has threads (run_tests) if it touches a lock another thread held; these only
    make system calls on values computed in the parent: no imports, no I/O, no locks."""
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))  # soft = hard: the program cannot raise them again


def _enter_sandbox(limits: dict[int, int], nproc: int, drop_to: int | None) -> None:
    """preexec_fn of the rlimit fallback (see _set_limits)."""
    # Best effort: a network namespace of our own. Must happen while we still have the privileges.
    if _libc.unshare(_CLONE_NEWNET) != 0 and drop_to is None:
        _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)  # unprivileged users: inside a new user namespace
    _set_limits(limits)
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


# ----------------------------------------------------------------------------- the rlimit fallback: in the parent

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
        resource.RLIMIT_NOFILE: MAX_OPEN_FILES,
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


def _poll(fd: int, timeout: float) -> bool:
    """Wait until `fd` is readable (a pidfd: its process exited) or `timeout` seconds pass; True if readable."""
    poller = select.poll()  # poll, not select: the caller may hold more than 1024 file descriptors
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _wait(pid: int, timeout: float) -> bool:
    """Wait until the process exits or `timeout` seconds pass; True on timeout. Waits on a pidfd, which does
    not reap the child (see _kill_all)."""
    fd = os.pidfd_open(pid)
    try:
        return not _poll(fd, timeout)
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


def _start(harness: str, out, err, preexec, drop_to: int | None) -> subprocess.Popen:
    # -I: no user site-packages, PYTHON* variables ignored, neither cwd nor the script's dir on sys.path.
    # Not -S: tests may import pytest or numpy from the interpreter's own site-packages.
    try:
        return subprocess.Popen([sys.executable, "-I", harness], cwd=os.path.dirname(harness), env=ENV,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                                start_new_session=True, preexec_fn=preexec)
    except PermissionError as e:
        if drop_to is None:
            raise
        raise PermissionError(f"user {drop_to} cannot run {sys.executable}; make its directories readable by "
                              "others (chmod o+rx) or run as a non-root user") from e


def _run_rlimit(files: dict[str, str], job: dict, out, err, *, timeout: float, memory_mb: int, max_file_mb: int,
                max_processes: int) -> tuple[int, bool]:
    """Run the harness with `files` in a fresh temporary folder under resource limits; (exit status, timed out)."""
    drop_to = SANDBOX_UID if os.geteuid() == 0 else None
    uid = os.getuid() if drop_to is None else drop_to
    nproc = _clamp(resource.RLIMIT_NPROC, _count_tasks(uid) + max_processes)
    preexec = functools.partial(_enter_sandbox, _limits(timeout, memory_mb, max_file_mb), nproc, drop_to)
    workdir = tempfile.mkdtemp(prefix="sandbox_")
    try:
        for name, text in {"harness.py": _HARNESS, **files, "job.json": json.dumps({**job, "uid": None,
                                                                                    "nproc": None})}.items():
            path = os.path.join(workdir, name)
            with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:  # bad text fails in the child
                f.write(text)
            if drop_to is not None:
                os.chown(path, drop_to, drop_to)
        if drop_to is not None:
            os.chown(workdir, drop_to, drop_to)
        proc = _start(os.path.join(workdir, "harness.py"), out, err, preexec, drop_to)
        netns = _private_netns(proc.pid)
        try:
            timed_out = _wait(proc.pid, timeout)
        finally:  # also on KeyboardInterrupt: nothing may outlive the run
            _kill_all(proc, netns)
    finally:
        _remove_tree(workdir)
    return (-signal.SIGKILL if timed_out else proc.returncode), timed_out


# ----------------------------------------------------------------------------- running programs

def _run(files: dict[str, str], job: dict, *, timeout: float = 5.0, memory_mb: int = 1024, max_output: int = 64_000,
         max_file_mb: int = 10, max_processes: int = 16, backend: str | None = None) -> Result:
    chosen = choose_backend(backend)
    runner = _run_bwrap if chosen == "bwrap" else _run_rlimit
    start = time.monotonic()
    # Output goes to unnamed files, bounded by RLIMIT_FSIZE, not to pipes we would have to drain.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        returncode, timed_out = runner(files, job, out, err, timeout=timeout, memory_mb=memory_mb,
                                       max_file_mb=max_file_mb, max_processes=max_processes)
        # stderr: the end, where the traceback that explains a failure is
        stdout, stderr = _read(out, max_output), _read(err, max_output, tail=True)
    return Result(returncode, stdout, stderr, timed_out, returncode == 0 and not timed_out, time.monotonic() - start,
                  chosen)


def run_python(source: str, *, timeout: float = 5.0, memory_mb: int = 1024, max_output: int = 64_000,
               max_file_mb: int = 10, max_processes: int = 16, backend: str | None = None) -> Result:
    """Run `source` as a script (__main__) in the sandbox (see the module docstring). memory_mb: address space
    per process; max_processes: processes + threads (bwrap: in the sandbox; rlimit: more than the sandbox user
    already runs); backend: "auto", "bwrap" or "rlimit" (None: default_backend())."""
    return _run({"prog.py": source}, {"mode": "script"}, timeout=timeout, memory_mb=memory_mb, max_output=max_output,
                max_file_mb=max_file_mb, max_processes=max_processes, backend=backend)


# ----------------------------------------------------------------------------- tests and rewards

# One optional "[ \t]*" after the language (never two adjacent ones): no backtracking on long runs of spaces.
_FENCE = re.compile(r"```[ \t]*(?:(?:python3?|py)[ \t]*)?\n(.*?)```", re.DOTALL | re.IGNORECASE)


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


def grade(program: str, tests: list[str], **limits) -> tuple[bool, Result]:
    """Run `program` and then `tests` in one sandbox: (passed, the run's Result). Passed means every test returned
    and the harness then wrote this run's fresh random token: an exit status of 0 alone is not a pass, since a
    program that calls sys.exit(0) or os._exit(0) before the tests would get full reward (an easy reward hack in
    RL). Tests are source texts: plain asserts (MBPP), HumanEval's `check(candidate)` + `check(f)`, or
    KodCode-style modules (`from solution import f`, top-level `def test_x(): ...`, each then called once).
    `limits`: keyword arguments of run_python."""
    token = secrets.token_hex(16)
    result = _run({"solution.py": program}, {"mode": "tests", "tests": list(tests), "token": token}, **limits)
    return result.passed and token in result.stderr, result


def run_tests(program: str, tests: list[str], *, timeout: float = 5.0, workers: int = 4, **limits) -> list[bool]:
    """Run `program` with each test in its own sandboxed process, `workers` at a time; verdicts in test order.
    `limits`: the other keyword arguments of run_python."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda test: grade(program, [test], timeout=timeout, **limits)[0], tests))


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
    return float(grade(code, tests, **limits)[0])


# ----------------------------------------------------------------------------- start-up cost

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Say which backend runs here and time each one: wall-clock "
                                                 "milliseconds per run of a trivial program and per pass@1 verdict.")
    parser.add_argument("--runs", type=int, default=30, help="runs of each kind per backend, interleaved")
    parser.add_argument("--compare", metavar="FILE", help="also time run_python and pass_at_1 of another "
                        "sandbox.py (e.g. an older commit's, from `git show`), interleaved with ours")
    args = parser.parse_args(argv)
    print(f"default backend: {default_backend()}; bwrap: {bwrap_problem() or 'runs here'}")
    runners = {name: (functools.partial(run_python, backend=name), functools.partial(pass_at_1, backend=name))
               for name in ("bwrap", "rlimit") if name == "rlimit" or bwrap_problem() is None}
    if args.compare:
        spec = importlib.util.spec_from_file_location("sandbox_compared", args.compare)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        runners[args.compare] = (other.run_python, other.pass_at_1)
    completion, tests = "```python\ndef f():\n    return 1\n```", ["assert f() == 1"]
    kinds = {"trivial program": lambda run, verdict: run("pass").passed,
             "pass@1 verdict": lambda run, verdict: verdict(completion, tests) == 1.0}
    seconds = {(name, kind): [] for name in runners for kind in kinds}
    for _ in range(args.runs + 1):  # the first round warms up (bwrap's probe, imports): not counted
        for name, (run, verdict) in runners.items():
            for kind, call in kinds.items():
                start = time.perf_counter()
                if not call(run, verdict):
                    raise RuntimeError(f"{name}: a {kind} failed")
                seconds[name, kind].append(time.perf_counter() - start)
    print("| sandbox | " + " | ".join(f"{kind} (ms per run, median)" for kind in kinds) + " |")
    print("|---" * (len(kinds) + 1) + "|")
    for name in runners:
        print(f"| {name} | " + " | ".join(f"{statistics.median(seconds[name, kind][1:]) * 1000:.0f}" for kind in kinds)
              + " |")


if __name__ == "__main__":
    main()
