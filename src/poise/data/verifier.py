"""Answer checking in a sandboxed worker process with a hard wall-clock limit per call.

A reward function (`poise.data.tasks.rewards`) runs untrusted model output through parsers such as sympy and
math-verify, which can hang (`9^9^9^9`), exhaust memory, or `eval` what they are given. `SafeVerifier` runs it in a
separate process:

- **Hard limit.** Each (response, problem) pair gets `timeout` seconds of wall-clock time. The parent waits on a
  pipe with `poll(timeout)`, never on a signal, so it works from any thread. On timeout the worker is killed
  (SIGKILL) and replaced, the pair scores 0 and is counted in `stats["timeouts"]`, and the remaining pairs go to
  the new worker.
- **No exception escapes.** An exception inside the reward function scores 0 (`stats["errors"]`); a dead worker
  is replaced (`stats["restarts"]`).
- **Nothing is executed.** Responses longer than `max_chars` or containing a double underscore (no answer needs
  one; every Python sandbox escape does) score 0 without reaching the worker. Inside the worker an audit hook
  (PEP 578, irremovable) refuses process creation, writes to files, file deletion and renaming, sockets and ctypes
  while a reward function runs (loading one, which may import C libraries, is not restricted), and the address
  space is capped (RLIMIT_AS), so a parser that evaluates its input can still do no harm.
- **NaN/inf.** A non-finite score is returned as None (unscorable), like a reward function's own None.

Workers are forked from a `forkserver` that has already imported the reward modules, so a replacement starts in
milliseconds. One verifier holds one worker; create one per thread that scores concurrently.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import multiprocessing.util  # noqa: F401 (its exit hook is registered before `_close_all`)
import os
import sys
import weakref
from collections.abc import Callable, Sequence

_FORBIDDEN_EVENTS = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                     "subprocess.Popen", "os.remove", "os.unlink", "os.rename", "os.rmdir", "os.mkdir",
                     "os.truncate", "os.chmod", "os.chown", "os.link", "os.symlink", "shutil.", "socket.",
                     "ctypes.", "os.kill", "os.putenv", "os.unsetenv", "sys.addaudithook", "os.startfile",
                     "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "pty.")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxViolation(RuntimeError):
    """Raised inside the worker when a reward function tries a forbidden operation."""


_ARMED = False  # True while a reward function runs; loading one (imports while unpickling it) is unrestricted


def _audit(event: str, args: tuple) -> None:
    if not _ARMED:
        return
    if event.startswith(_FORBIDDEN_EVENTS):
        raise SandboxViolation(f"verifier sandbox: {event} refused")
    if event == "open" and len(args) >= 3:
        mode, flags = args[1], args[2]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writes:
            raise SandboxViolation(f"verifier sandbox: open({args[0]!r}, {mode!r}) for writing refused")


def _worker(conn, memory_bytes: int) -> None:
    """Worker loop: receive (fn, [(index, response, problem), ...]); send (index, score | None, error) per pair."""
    global _ARMED
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):  # a Ctrl-C or a scheduler's SIGTERM reaches the whole process group:
        signal.signal(s, signal.SIG_IGN)       # the trainer stops after its step, which needs this worker's scores
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except (ImportError, ValueError, OSError):  # not available on this platform: the time limit still holds
        pass
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every hostile input it times out on
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    sys.setrecursionlimit(10_000)
    sys.addaudithook(_audit)
    while True:
        try:
            fn, items = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 - e.g. the reward function cannot be imported here
            conn.send((-1, None, f"cannot load the reward function in the verifier worker: {type(e).__name__}: {e}"))
            continue
        for index, response, problem in items:
            try:
                _ARMED = True
                score, err = fn(response, problem), None
            except BaseException as e:  # noqa: BLE001 - any failure of the reward function scores 0
                score, err = 0.0, f"{type(e).__name__}: {str(e)[:200]}"
            finally:
                _ARMED = False
            try:
                conn.send((index, score if score is None else float(score), err))
            except (TypeError, ValueError):  # the function returned something that is not a number
                conn.send((index, 0.0, f"reward function returned {type(score).__name__}"))


_CTX = None
_LIVE: "weakref.WeakSet[SafeVerifier]" = weakref.WeakSet()  # verifiers with a worker, stopped at interpreter exit


@atexit.register  # registered after multiprocessing's own exit hook, so it runs first: that hook would SIGTERM the
def _close_all() -> None:  # workers (which ignore it) and then wait for them forever
    for v in list(_LIVE):
        v.close()


def _context():
    """The forkserver context, preloading the reward modules once (falls back to spawn where forkserver is absent)."""
    global _CTX
    if _CTX is None:
        if "forkserver" in mp.get_all_start_methods():
            _CTX = mp.get_context("forkserver")
            _CTX.set_forkserver_preload(["poise.data.tasks", "poise.data.tasks.rewards", "math_verify", "sympy"])
        else:
            _CTX = mp.get_context("spawn")
    return _CTX


class SafeVerifier:
    """`verifier(fn, responses, problems) -> list[float | None]`, each call of `fn` under a hard time limit.

    Args:
        timeout: wall-clock seconds allowed per (response, problem) pair.
        max_chars: responses longer than this score 0 without being parsed.
        memory_mb: address-space cap of the worker process.
    Counters in `self.stats`: calls, timeouts, errors, rejected (too long / suspicious), restarts, unscorable.
    """

    def __init__(self, timeout: float = 5.0, max_chars: int = 20_000, memory_mb: int = 4096):
        if timeout <= 0:
            raise ValueError(f"reward.timeout: must be > 0 seconds, got {timeout}")
        self.timeout, self.max_chars, self.memory_bytes = timeout, max_chars, memory_mb * 2**20
        self.stats = {"calls": 0, "timeouts": 0, "errors": 0, "rejected": 0, "restarts": 0, "unscorable": 0}
        self.last_error: str | None = None
        self._proc = self._conn = None

    # ---- worker lifecycle ----
    def _start(self) -> None:
        """Fork a worker. It must not re-run the caller's `__main__` (multiprocessing's default for forkserver and
        spawn, which breaks scripts without an `if __name__ == "__main__"` guard): the main-module entries are
        dropped from the preparation data for this one start."""
        from multiprocessing import spawn

        ctx = _context()
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child, self.memory_bytes), daemon=True)
        original = spawn.get_preparation_data

        def without_main(name):
            data = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = without_main
        try:
            self._proc.start()
        finally:
            spawn.get_preparation_data = original
        child.close()
        self._conn = parent
        _LIVE.add(self)

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        """Stop the worker (it also exits by itself when this process dies)."""
        self._kill()

    def __del__(self):
        try:
            self._kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- scoring ----
    def _admissible(self, response) -> bool:
        return isinstance(response, str) and len(response) <= self.max_chars and "__" not in response

    def __call__(self, fn: Callable, responses: Sequence[str], problems: Sequence) -> list[float | None]:
        if len(responses) != len(problems):
            raise ValueError(f"got {len(responses)} responses for {len(problems)} problems")
        if getattr(fn, "__module__", None) == "__main__":
            raise ValueError(f"reward function {fn.__name__!r} is defined in __main__; the verifier worker imports it "
                             "by name, so define it in an importable module")
        scores: list[float | None] = [0.0] * len(responses)
        todo = []
        for i, (r, p) in enumerate(zip(responses, problems)):
            if self._admissible(r):
                todo.append((i, r, p))
            else:
                self.stats["rejected"] += 1
        self.stats["calls"] += len(responses)
        while todo:
            if self._proc is None or not self._proc.is_alive():
                self._kill()
                self._start()
            try:
                self._conn.send((fn, todo))
            except (BrokenPipeError, OSError):  # the worker died between calls
                self._kill()
                continue
            todo = self._collect(todo, scores)
        for i, s in enumerate(scores):
            if s is None or not math.isfinite(s):
                scores[i] = None
                self.stats["unscorable"] += 1
        return scores

    def _collect(self, todo: list, scores: list) -> list:
        """Read one result per pending pair; on a timeout or a dead worker, return the pairs still to score."""
        for k, (index, _, _) in enumerate(todo):
            try:
                got = self._conn.recv() if self._conn.poll(self.timeout) else None
            except (EOFError, OSError):  # the worker died (e.g. out of memory): this pair scores 0
                self.stats["errors"] += 1
                self.last_error = "verifier worker died"
                self._kill()
                self.stats["restarts"] += 1
                return todo[k + 1:]
            if got is None:  # hard timeout: kill and replace the worker, move on to the next pair
                self.stats["timeouts"] += 1
                self._kill()
                self.stats["restarts"] += 1
                return todo[k + 1:]
            i, score, err = got
            if i == -1:
                raise RuntimeError(err)
            if i != index:  # cannot happen with one worker per verifier; refuse to misattribute scores
                raise RuntimeError(f"verifier protocol error: expected result {index}, got {i}")
            scores[i] = score
            if err is not None:
                self.stats["errors"] += 1
                self.last_error = err
        return []
