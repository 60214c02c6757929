"""A local stand-in for a SandboxFusion server, so the SandboxFusion client runs in the tests without a network.

TEST DOUBLE, NOT A SANDBOX: it runs the posted code with a plain `subprocess.run([sys.executable, "-I", "-c", code])`
on this machine, with no isolation beyond a time limit. It serves the one endpoint the client uses, `POST /run_code`,
with SandboxFusion's request and response JSON (bytedance/SandboxFusion sandbox/server/sandbox_api.py
`RunCodeRequest` / `RunCodeResponse`, sandbox/runners/types.py `CommandRunResult`): "Success" when the program exits
with 0, "Failed" on a non-zero exit or a time limit (`run_result.status` "TimeLimitExceeded", the output so far kept).

`FusionStandin(mode)`: "ok" (the above), "garbage" (replies 200 with a body that is not JSON), "http500" (replies
HTTP 500), "hang" (replies only after 3 s); `.url` is its address, `.bodies` the request bodies it received.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def run_code(request: dict) -> dict:
    """SandboxFusion's RunCodeResponse for one RunCodeRequest, computed with a bare subprocess."""
    stdin = request.get("stdin")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-I", "-c", request["code"]], input=stdin or "",
                              capture_output=True, text=True, timeout=float(request.get("run_timeout", 10)))
    except subprocess.TimeoutExpired as e:
        partial = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)]
        run = {"status": "TimeLimitExceeded", "execution_time": time.perf_counter() - start, "return_code": None,
               "stdout": partial[0], "stderr": partial[1]}
        return {"status": "Failed", "message": "", "compile_result": None, "run_result": run,
                "executor_pod_name": None, "files": {}}
    run = {"status": "Finished", "execution_time": time.perf_counter() - start, "return_code": done.returncode,
           "stdout": done.stdout, "stderr": done.stderr}
    return {"status": "Success" if done.returncode == 0 else "Failed", "message": "", "compile_result": None,
            "run_result": run, "executor_pod_name": None, "files": {}}


class FusionStandin:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) answering like SandboxFusion; a context manager."""

    def __init__(self, mode: str = "ok"):
        self.mode, self.bodies = mode, []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                standin.bodies.append(body)
                if self.path != "/run_code":
                    return self._send(404, b'{"detail": "Not Found"}')
                if standin.mode == "garbage":
                    return self._send(200, b"<html>upstream says hello</html>")
                if standin.mode == "http500":
                    return self._send(500, b"Internal Server Error")
                if standin.mode == "hang":
                    time.sleep(3)
                    return self._send(200, b"{}")
                request = json.loads(body)
                if not isinstance(request.get("code"), str) or request.get("language") != "python":
                    return self._send(422, b'{"detail": "code and language python required"}')
                self._send(200, json.dumps(run_code(request)).encode())

            def _send(self, code: int, data: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up ("hang" mode)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FusionStandin:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
