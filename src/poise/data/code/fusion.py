"""The SandboxFusion backend (`reward.code_backend sandbox_fusion`): programs run on a SandboxFusion server
(github.com/bytedance/SandboxFusion, the sandbox of the official POISE code and of verl) through its HTTP API.

One call is `POST <url>/run_code` with SandboxFusion's `RunCodeRequest` (sandbox/server/sandbox_api.py):
`{"code", "language": "python", "stdin", "run_timeout", "compile_timeout", "memory_limit_MB", "files": {},
"fetch_files": []}`. The reply is a `RunCodeResponse`: `status` ("Success" | "Failed" | "SandboxError"), `message`,
`compile_result`, `run_result` = `{"status": "Finished" | "TimeLimitExceeded" | "Error", "execution_time",
"return_code", "stdout", "stderr"}` (sandbox/runners/types.py). "Failed" only means a non-zero exit code or a time
limit; "SandboxError" means the server itself failed.

- stdio tests: one call per case, with the case's stdin. The expected output never leaves this process: the
  server returns what the program printed and `same_output` compares it here.
- assert tests: one call whose code is the local sandbox's harness (harness.py) and whose stdin is its job (the
  program, the tests, a per-call nonce: not in the script file the server writes, which the program could read).
  The verdicts come back nonce-tagged on the original stdout and are read as the local sandbox reads them: a
  program that exits before the cases passes nothing, and one that prints verdict lines cannot know the nonce. An
  in-process harness is not tamper-proof against a program that inspects the harness's own frames; the server's
  isolation is the security boundary.

Statuses: a time limit (the run's "TimeLimitExceeded", or no HTTP reply within timeout + HTTP_MARGIN_S) is
"timeout"; a refused connection, an HTTP error, a reply that is not SandboxFusion's JSON, or "SandboxError" is
"error" with the reason in `detail`. Jobs' calls run concurrently on a thread pool.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from poise.data.code.programs import CodeJob, CodeResult, same_output
from poise.data.code.sandbox import HARNESS, SandboxUnavailable, _verdicts, harness_job

HTTP_MARGIN_S = 5.0  # an HTTP call gets the run's timeout plus this before it counts as timed out
RETRY_HTTP = (502, 503, 504)  # gateway answers that are retried (verl retries 504 the same way)
RETRIES = 2
HARNESS_SOURCE = HARNESS.read_text()  # the local sandbox's harness, sent as the code of an assert job's call
OUT_LIMIT = 1 << 20  # bytes of output the harness returns per case (stdio runs one call per case instead)


@dataclass
class Reply:
    """One /run_code call's outcome: status "ok" (`run` holds run_result), "timeout" or "error" (`detail` says
    why); `seconds` is the call's wall-clock time."""

    status: str
    run: dict
    detail: str
    seconds: float


def endpoint(url: str) -> str:
    """The /run_code address for a server URL (`http://host:8080`) or an endpoint as verl takes it (`.../run_code`)."""
    url = url.rstrip("/")
    return url if url.endswith("/run_code") else url + "/run_code"


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


class SandboxFusionRunner:
    """Runs CodeJobs on a SandboxFusion server: `run(jobs)` gives one CodeResult per job, in order.

    url: the server (`http://host:8080`) or its `/run_code` endpoint; timeout: seconds of run time per call (the
    server enforces it); workers: concurrent calls (0 = os.cpu_count()); memory_mb: the server's memory limit per
    run (`memory_limit_MB`). Counters in `self.stats` (as LocalSandbox's): runs, timeouts, errors, seconds."""

    name = "sandbox_fusion"

    def __init__(self, url: str, timeout: float = 10.0, workers: int = 0, memory_mb: int = 1024):
        if timeout <= 0:
            raise ValueError(f"reward.code_timeout: must be > 0 seconds, got {timeout}")
        self.url, self.endpoint = url, endpoint(url)
        self.timeout, self.memory_mb = float(timeout), int(memory_mb)
        self.workers = workers or os.cpu_count() or 1
        self.stats = {"runs": 0, "timeouts": 0, "errors": 0, "seconds": 0.0}

    def check(self) -> None:
        """Raise SandboxUnavailable (one line naming the URL) unless the server runs a print and returns its output."""
        token = secrets.token_hex(8)
        reply = self.call(f"print({token!r})", None)
        if reply.status != "ok":
            raise SandboxUnavailable(f"SandboxFusion at {self.endpoint} cannot run code: {reply.detail}")
        if token not in (reply.run.get("stdout") or ""):
            raise SandboxUnavailable(f"SandboxFusion at {self.endpoint} ran print({token!r}) but returned "
                                     f"{(reply.run.get('stdout') or '')[:80]!r}")

    def call(self, code: str, stdin: str | None) -> Reply:
        """One /run_code call (retrying gateway errors), read into a Reply."""
        payload = json.dumps({"code": code, "language": "python", "stdin": stdin, "run_timeout": self.timeout,
                              "compile_timeout": self.timeout, "memory_limit_MB": self.memory_mb, "files": {},
                              "fetch_files": []}).encode()
        start = time.perf_counter()
        for attempt in range(RETRIES + 1):
            status, run, detail = self._post(payload)
            if attempt == RETRIES or not detail.startswith(tuple(f"HTTP {c} " for c in RETRY_HTTP)):
                break
            time.sleep(attempt + 1)
        return Reply(status, run, detail, time.perf_counter() - start)

    def _post(self, payload: bytes) -> tuple[str, dict, str]:
        request = urllib.request.Request(self.endpoint, data=payload, method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        limit = self.timeout + HTTP_MARGIN_S
        try:
            with urllib.request.urlopen(request, timeout=limit) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            return "error", {}, f"HTTP {e.code} {e.reason}: {_last_line(e.read().decode(errors='replace'))}"
        except (TimeoutError, socket.timeout):
            return "timeout", {}, f"no reply from {self.endpoint} within {limit:g} s"
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                return "timeout", {}, f"no reply from {self.endpoint} within {limit:g} s"
            return "error", {}, f"cannot reach {self.endpoint}: {e.reason}"
        except OSError as e:
            return "error", {}, f"cannot reach {self.endpoint}: {e}"
        return _read_reply(raw)

    def run(self, jobs: list[CodeJob]) -> list[CodeResult]:
        """One CodeResult per job, in order. Each stdio case and each assert job is one call; all calls of all jobs
        share the pool. `seconds` of a result is the sum of its calls' wall-clock times."""
        calls, nonces = [], []  # calls: (job index, code, stdin)
        for j, job in enumerate(jobs):
            if job.tests["kind"] == "stdio":
                calls += [(j, job.program, stdin) for stdin, _ in job.tests["cases"]]
                nonces.append(None)
            else:
                nonces.append(secrets.token_hex(16))
                stdin = harness_job(job, nonces[-1], self.timeout, self.timeout, self.memory_mb, OUT_LIMIT).decode()
                calls.append((j, HARNESS_SOURCE, stdin))
        if not calls:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(calls))) as pool:
            replies = list(pool.map(lambda c: self.call(c[1], c[2]), calls))
        per_job: list[list[Reply]] = [[] for _ in jobs]
        for (j, _, _), reply in zip(calls, replies):
            per_job[j].append(reply)
        results = [_stdio_result(job, rs) if nonce is None else _assert_result(job, rs[0], nonce)
                   for job, rs, nonce in zip(jobs, per_job, nonces)]
        for r in results:
            self.stats["runs"] += 1
            self.stats["seconds"] += r.seconds
            self.stats["timeouts"] += r.status == "timeout"
            self.stats["errors"] += r.status == "error"
        return results


def _read_reply(raw: bytes) -> tuple[str, dict, str]:
    """(status, run_result, detail) from a /run_code reply body."""
    try:
        body = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "error", {}, f"the server's reply is not JSON: {raw[:80]!r}"
    if not isinstance(body, dict) or body.get("status") not in ("Success", "Failed", "SandboxError"):
        return "error", {}, f"the server's reply is not a SandboxFusion RunCodeResponse: {str(body)[:80]}"
    if body["status"] == "SandboxError":
        return "error", {}, f"SandboxError: {_last_line(body.get('message'))}"
    run = body.get("run_result")
    if not isinstance(run, dict):
        return "error", {}, f"the server's reply has no run_result: {str(body)[:80]}"
    if run.get("status") == "TimeLimitExceeded":
        return "timeout", run, f"time limit exceeded ({run.get('execution_time')} s)"
    if run.get("status") != "Finished":
        return "error", {}, f"run status {run.get('status')!r}: {_last_line(run.get('stderr'))}"
    return "ok", run, ""


def _status(replies: list[Reply]) -> tuple[str, str]:
    """The job's status and detail from its calls' statuses: any error wins, then any timeout."""
    for kind in ("error", "timeout"):
        for r in replies:
            if r.status == kind:
                return kind, r.detail
    return "ok", ""


def _stdio_result(job: CodeJob, replies: list[Reply]) -> CodeResult:
    passed, detail, outputs = 0, "", []
    for i, ((_, expected), r) in enumerate(zip(job.tests["cases"], replies)):
        stdout = r.run.get("stdout") or ""
        outputs.append(stdout if r.status == "ok" else None)
        if r.status == "ok" and r.run.get("return_code") == 0 and same_output(stdout, expected):
            passed += 1
        elif r.status == "ok" and not detail:
            code = r.run.get("return_code")
            detail = f"case {i}: " + ("wrong output" if code == 0 else
                                      f"exit code {code}: {_last_line(r.run.get('stderr'))}")
    status, why = _status(replies)
    return CodeResult(passed, len(job.tests["cases"]), status, sum(r.seconds for r in replies), why or detail,
                      outputs)


def _assert_result(job: CodeJob, reply: Reply, nonce: str) -> CodeResult:
    """The harness's verdicts (harness.py's protocol, read as the local sandbox reads them): a case passes only when
    its nonce-tagged verdict says so."""
    total = len(job.tests["cases"])
    verdicts, done = _verdicts((reply.run.get("stdout") or "").encode(), nonce)
    passed = sum(ok for i, ok, _, _ in verdicts if 0 <= i < total)
    detail = reply.detail
    if not detail and passed < total:
        fails = sorted((i, why) for i, ok, _, why in verdicts if not ok and why)
        detail = (f"case {fails[0][0]}: {fails[0][1]}" if fails else
                  f"cases not reported (exit code {reply.run.get('return_code')}: "
                  f"{_last_line(reply.run.get('stderr'))})")
    return CodeResult(passed, total, reply.status, reply.seconds, detail)
