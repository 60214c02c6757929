"""The test harness that runs INSIDE the code sandbox (`python -I -S harness.py`, standard library only; never imported
by poise itself).

Protocol. The job arrives as one JSON object on standard input: `nonce`, `program`, `tests` (see programs.py),
`case_timeout` (seconds per case), `out_limit` (bytes of a program's output returned per case), and the limits
`memory_bytes`, `cpu_seconds`, `open_files`, `file_bytes`. The harness reads it whole and closes standard input,
sets the limits on itself (irreversibly: the sandbox has no capabilities), then writes one line per test case to
its original standard output, `<nonce> {"i": case, "ok": bool, "out": stdout or null, "err": reason or null}`, and
`<nonce> done` at the end. The parent ignores every line without the nonce, so what the program prints cannot pass
as a verdict; the program's own standard output and error go to a file in the sandbox's /tmp (stdio tests) or to
/dev/null (assert tests).

- assert tests: the program, then the setup, then each case, all in one `__main__` namespace; a case passes when it
  completes. Any exception, SystemExit included, fails it; an exception while running the program or the setup
  fails every case.
- stdio tests: per case, the program runs in a fresh `__main__` namespace with the case's input as file descriptor
  0 (and `sys.stdin`); what it wrote to file descriptor 1 (up to `out_limit` bytes) is returned for the parent to
  compare. SystemExit with status 0 or None is a normal end, as for a script.

Each case runs under a wall-clock timer (`case_timeout`); the sandbox's own deadline, enforced from outside, bounds
the whole run. What this cannot stop is a program that reads the nonce from this process's memory and prints
verdicts itself: that is reward hacking, not an escape, and the module docstring of sandbox.py says so.
"""

import fcntl
import json
import os
import resource
import signal
import sys


class CaseTimeout(BaseException):
    """The per-case timer fired."""


def _alarm(signum, frame):
    raise CaseTimeout()


def _limits(job):
    for name, key in (("RLIMIT_AS", "memory_bytes"), ("RLIMIT_CPU", "cpu_seconds"), ("RLIMIT_NOFILE", "open_files"),
                      ("RLIMIT_FSIZE", "file_bytes"), ("RLIMIT_CORE", None), ("RLIMIT_NPROC", None)):
        value = int(job[key]) if key else (0 if name == "RLIMIT_CORE" else 64)
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past RLIMIT_FSIZE raises in the program instead


def _reason(e):
    text = f"{type(e).__name__}: {e}"
    return text[:300]


def main():
    job = json.loads(sys.stdin.buffer.read())
    os.close(0)
    nonce, program, tests = job["nonce"], job["program"], job["tests"]
    case_timeout, out_limit = float(job["case_timeout"]), int(job["out_limit"])
    channel = os.fdopen(fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 100), "w", encoding="utf-8", errors="replace")
    dumps, write, flush = json.dumps, channel.write, channel.flush

    def report(i, ok, out=None, err=None):
        write(nonce + " " + dumps({"i": i, "ok": ok, "out": out, "err": err}) + "\n")
        flush()

    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    _limits(job)
    signal.signal(signal.SIGALRM, _alarm)
    timer = signal.setitimer
    code = compile_or_none(program, report, len(tests["cases"]))
    if code is None:
        write(nonce + " done\n")
        flush()
        return
    if tests["kind"] == "assert":
        run_asserts(code, tests, case_timeout, timer, report)
    else:
        run_stdio(code, tests, case_timeout, out_limit, timer, report)
    timer(signal.ITIMER_REAL, 0)
    write(nonce + " done\n")
    flush()
    os._exit(0)  # no interpreter teardown: the program's atexit hooks and threads do not run on


def compile_or_none(program, report, n_cases):
    try:
        return compile(program, "<solution>", "exec")
    except BaseException as e:  # a syntax error fails every case
        for i in range(n_cases):
            report(i, False, err=_reason(e))
        return None


def run_asserts(code, tests, case_timeout, timer, report):
    # What runs after the program is compiled and bound here, before it: a program that replaces builtins.exec,
    # compile or enumerate cannot turn the cases into no-ops (tests/test_code_sandbox.py: patch-builtins-*).
    run, real, n = exec, signal.ITIMER_REAL, len(tests["cases"])
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    cases = []
    for i, case in enumerate(tests["cases"]):
        try:
            cases.append((i, compile(case, f"<case {i}>", "exec"), None))
        except BaseException as e:  # a case that does not compile fails alone
            cases.append((i, None, _reason(e)))
    try:
        setup = compile(tests.get("setup") or "", "<setup>", "exec")
        timer(real, case_timeout)
        run(code, namespace)
        run(setup, namespace)
        timer(real, 0)
    except BaseException as e:
        timer(real, 0)
        for i in range(n):
            report(i, False, err="program: " + _reason(e))
        return
    for i, case, why in cases:
        if case is None:
            report(i, False, err=why)
            continue
        try:
            timer(real, case_timeout)
            run(case, namespace)
            timer(real, 0)
        except BaseException as e:
            timer(real, 0)
            report(i, False, err=_reason(e))
        else:
            report(i, True)


def run_stdio(code, tests, case_timeout, out_limit, timer, report):
    out_path, in_path = "/tmp/.stdout", "/tmp/.stdin"
    for i, (stdin, _) in enumerate(tests["cases"]):  # the expected output is not here: the parent compares
        with open(in_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        fd_in = os.open(in_path, os.O_RDONLY)
        fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd_in, 0)
        os.dup2(fd_out, 1)
        os.close(fd_in)
        os.close(fd_out)
        sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        err = None
        try:
            timer(signal.ITIMER_REAL, case_timeout)
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
            timer(signal.ITIMER_REAL, 0)
        except SystemExit as e:
            timer(signal.ITIMER_REAL, 0)
            if e.code not in (None, 0):
                err = f"exit status {e.code!r}"
        except BaseException as e:
            timer(signal.ITIMER_REAL, 0)
            err = _reason(e)
        try:
            sys.stdout.flush()
        except BaseException as e:  # e.g. the output exceeded the file size limit
            err = err or _reason(e)
        with open(out_path, "rb") as f:
            out = f.read(out_limit + 1)
        if len(out) > out_limit:
            err, out = err or f"output over {out_limit} bytes", b""
        report(i, err is None, out=out.decode("utf-8", "replace"), err=err)


if __name__ == "__main__":
    main()
