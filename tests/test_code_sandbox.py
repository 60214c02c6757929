"""Hostile programs against the local code sandbox (poise.data.code.sandbox.LocalSandbox, bubblewrap + seccomp +
rlimits): each must score 0, end within timeout + 1 s and leave no process and no file behind, and the test process
(the trainer) must receive no signal, connection or datagram.

A case of a hostile job passes only if its attack SUCCEEDED (it read the secret, reached the parent's socket, started
a process, turned a wrong program's failing case into a pass...), so a score of 0 means the attack was stopped, not
that the case was impossible; `test_quiet_attacks_do_succeed_without_the_sandbox` runs the harmless ones through the
same harness with `sandbox="none"` to show their cases can pass. The whole table runs as ONE batch (module fixture,
2 workers) and each test reads its own result.

Every program starts by naming its process `phx<index><token>` (/proc/self/comm, inherited by any fork) and every
process it tries to start carries `poise_hostile_<token>_<index>` in its arguments, so the scan of /proc after the
batch finds whatever survived; files it tries to leave on the machine carry the same name.

| attack (test id) | what stops it |
|---|---|
| fork-bomb, subprocess-popen, subprocess-run, os-system, os-posix-spawn, multiprocessing-process | seccomp: fork, vfork and clone without CLONE_THREAD fail with EPERM |
| clone-syscall (ctypes), clone3-syscall (ctypes) | seccomp: clone of a process EPERM, clone3 ENOSYS |
| execv-replaces-harness | the verdict channel is close-on-exec (no verdict without the harness); the deadline kills the replacement |
| memory-bomb-10gb, memory-bomb-list, raise-rlimit-then-allocate | RLIMIT_AS (1 GB), not raisable without capabilities |
| thread-bomb | RLIMIT_AS: a few hundred threads with default stacks and malloc arenas |
| deep-recursion | RLIMIT_AS / C stack: MemoryError or a crash |
| infinite-loop, busy-threads, ignore-sigalrm-loop, block-all-signals-loop | the deadline (SIGKILL of bwrap from outside, the PID namespace dies with it); RLIMIT_CPU |
| stdout-100mb, stderr-100mb | RLIMIT_FSIZE on the captured output file, stderr to /dev/null, out_limit |
| verdict-channel-flood | the parent's read limit (kill at 8 x out_limit + 1 MB) |
| file-1gb-in-tmp, fill-tmp | RLIMIT_FSIZE and the 64 MB /tmp tmpfs |
| fill-dev-shm, fill-root, write-root | / and /dev remounted read-only, /dev/shm a 64 MB tmpfs (the fix noted in sandbox.py) |
| write-usr, write-repo, write-cwd, write-host-tmp, write-home | mount namespace: read-only system dirs, no host /tmp, home or project |
| sys-exit-before-tests, os-exit-before-tests | SystemExit fails every case; no `done` line = no trustworthy outcome |
| forged-verdicts-stdout, forged-verdicts-channel | the per-run nonce: lines without it are ignored |
| patch-builtins-exec, patch-builtins-compile, patch-builtins-enumerate | the harness compiles the cases and binds exec before the program runs (fix noted in harness.py) |
| patch-json-and-stdout, patch-harness-module, redefine-check-and-assertionerror | the harness's own bindings (json.dumps, the channel) are taken before the program runs; the setup runs after it |
| close-verdict-channel, close-all-fds | the harness cannot report: no `done`, score 0 |
| read-job-from-stdin, read-job-from-init-stdin | the harness reads its job whole and closes stdin before the program runs |
| steal-expected-output | the expected stdout of stdio cases never enters the sandbox (fix noted in sandbox.py) |
| unshare-userns, unshare-net-mount, mount-tmpfs, setns-init-net, chroot | seccomp (EPERM), --disable-userns, no capabilities |
| setuid-0 | user namespace without capabilities |
| ptrace-attach-pid-1, ptrace-seize-trainer, kernel-surface-syscalls | seccomp (ptrace, keyctl, userfaultfd, io_uring, bpf: EPERM); the trainer is not in the PID namespace |
| tcp-connect-parent, http-fetch-parent, udp-send-parent, unix-socket-host-path, unix-socket-abstract, packet-socket, dns-lookup | empty network namespace and seccomp (socket: EPERM); no /etc |
| read-env-secret | --clearenv (the trainer's environment is not passed) |
| read-home-file, read-etc-passwd, read-etc-hostname, read-repo-file, read-host-via-proc-1-root, read-sys | mount namespace: none of these is mounted |
| read-trainer-cmdline, read-host-pid-1, parent-chain-reaches-trainer | PID namespace: only the sandbox's own processes are in its /proc |
| kill-trainer, killpg-trainer, kill-getppid, kill-all-sigkill | PID namespace: the trainer's pid does not exist inside; kill(-1) finds no process (ESRCH) |

Known limits, marked xfail (strict) and reported, not fixed here:

| attack | why it gets through |
|---|---|
| thread-bomb-small-stacks | only where the sandbox stays mapped to root: malloc arenas capped at 1 and 32 KB stacks give 1,000 threads (the case), thousands (~58 KB of address space each, ~17,000 at 1 GB). RLIMIT_NPROC (64) does not bind a process whose user is root outside its user namespace; as root, LocalSandbox runs bwrap as uid 65534 instead, which needs bwrap and the Python installation within other users' reach. CI runs as root from a Python under /root (mode 700), so the sandbox stays mapped to root there and only RLIMIT_AS and the deadline bound the count (on a host whose pid_max is 32768 two such sandboxes can exhaust the PID space for `timeout` seconds). With /root searchable by others the same case stopped at 62 threads (checked by hand, 2026-12-07) |
| steal-nonce-from-harness-frame | assert cases run in the program's own interpreter: it can find the harness's `report` through its frames and print a passing verdict (sandbox.py's docstring: reward hacking, not an escape; stdio cases are immune since the parent compares the output) |
"""

from __future__ import annotations

import glob
import http.server
import os
import platform
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from poise.data.code.programs import CodeJob
from poise.data.code.sandbox import LocalSandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                                reason="the hostile table uses Linux x86-64 system call numbers")

T = 2.0  # the sandbox's timeout (seconds) for every job here
TOKEN = secrets.token_hex(3)
REPO = Path(__file__).resolve().parents[1]
SECRET_ENV = "POISE_HOSTILE_SECRET"
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def A(*cases: str, setup: str = "") -> dict:
    return {"kind": "assert", "setup": setup, "cases": list(cases)}


def S(*pairs: tuple[str, str]) -> dict:
    return {"kind": "stdio", "cases": [list(p) for p in pairs]}


@dataclass(frozen=True)
class Attack:
    id: str
    program: str  # a string.Template: $OUT, $PORT, $TRAINER... (see `context`)
    tests: object  # a tests dict (its strings are templates too) or a function returning one (not substituted)
    xfail: str = ""  # a known limit: the reason
    xfail_only_as_root: bool = False  # ... that holds only when the tests run as root


LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
WRONG_ADD = "def add(a, b):\n    return 0\n"
ADD_CASE = "assert add(2, 3) == 5"


def _fill(path: str, n: int = 200) -> str:
    """A program writing n files of 1 MB at path_<i> (bounded: it cannot eat the machine if the limit is gone)."""
    return (f"written = 0\nfor i in range({n}):\n    with open(f'{path}_{{i}}', 'wb') as f:\n"
            f"        f.write(b'x' * 10 ** 6)\n    written += 1\n")


ATTACKS = [
    # ---- processes ----
    Attack("fork-bomb", "import os\nfor _ in range(6):\n    os.fork()\nforked = True\n", A("assert forked")),
    Attack("subprocess-popen", "import subprocess\np = subprocess.Popen(['/bin/sleep', '30', '$OUT'])\n"
           "started = p.pid > 0\n", A("assert started")),
    Attack("subprocess-run", "import subprocess\nr = subprocess.run(['/bin/sh', '-c', 'exit 7', '$OUT'])\n",
           A("assert r.returncode == 7")),
    Attack("os-system", "import os\nrc = os.system('exit 7 # $OUT')\n", A("assert rc == 7 << 8")),
    Attack("os-posix-spawn", "import os\npid = os.posix_spawn('/bin/sleep', ['sleep', '30', '$OUT'], {})\n",
           A("assert pid > 0")),
    Attack("multiprocessing-process", "import multiprocessing as mp\np = mp.get_context('fork').Process(target=print)\n"
           "p.start()\np.join()\n", A("assert p.exitcode == 0")),
    Attack("clone-syscall", LIBC + "import os, signal\nr = libc.syscall(56, signal.SIGCHLD, 0, 0, 0, 0)\n"
           "if r == 0:\n    os._exit(0)\n", A("assert r > 0")),
    Attack("clone3-syscall", LIBC + "import os, signal, struct\n"
           "args = ctypes.create_string_buffer(struct.pack('=11Q', 0, 0, 0, 0, signal.SIGCHLD, *[0] * 6))\n"
           "r = libc.syscall(435, args, 88)\nif r == 0:\n    os._exit(0)\n", A("assert r > 0")),
    Attack("execv-replaces-harness", "import os, sys\n"
           "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', '$OUT'])\n",
           A("assert True")),
    # ---- memory, CPU, time ----
    Attack("memory-bomb-10gb", "b = bytearray(10 ** 10)\n", A("assert len(b) == 10 ** 10")),
    Attack("memory-bomb-list", "chunks = []\nfor _ in range(400):\n    chunks.append(b'x' * 10 ** 7)\n",
           A("assert len(chunks) == 400")),
    Attack("raise-rlimit-then-allocate", "import resource\n"
           "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
           "b = bytearray(2 * 10 ** 9)\n", A("assert len(b) == 2 * 10 ** 9")),
    Attack("thread-bomb", "import threading, time\nthreads = []\nfor _ in range(5000):\n"
           "    t = threading.Thread(target=time.sleep, args=(30,), daemon=True)\n    t.start()\n"
           "    threads.append(t)\n", A("assert len(threads) == 5000")),
    Attack("thread-bomb-small-stacks", LIBC + "import threading, time\nlibc.mallopt(-8, 1)  # M_ARENA_MAX\n"
           "threading.stack_size(32768)\nthreads = []\nfor _ in range(1000):\n"
           "    t = threading.Thread(target=time.sleep, args=(1,), daemon=True)\n    t.start()\n"
           "    threads.append(t)\n", A("assert len(threads) == 1000"),  # the harness means 64 (RLIMIT_NPROC)
           xfail="RLIMIT_NPROC does not bind host root; with 32 KB stacks and one malloc arena only RLIMIT_AS "
                 "(~58 KB of address space a thread) and the deadline bound the thread count",
           xfail_only_as_root=True),
    Attack("deep-recursion", "import sys\nsys.setrecursionlimit(10 ** 9)\n"
           "def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)\ndepth = down(10 ** 7)\n",
           A("assert depth == 10 ** 7")),
    Attack("infinite-loop", "while True:\n    pass\n", A("assert True")),
    Attack("busy-threads", "import threading\ndef spin():\n    while True:\n        pass\n"
           "for _ in range(32):\n    threading.Thread(target=spin, daemon=True).start()\nspin()\n", A("assert True")),
    Attack("ignore-sigalrm-loop", "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
           "signal.setitimer(signal.ITIMER_REAL, 0)\nwhile True:\n    pass\n", A("assert True")),
    Attack("block-all-signals-loop", "import signal\n"
           "for s in (signal.SIGALRM, signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
           "    signal.signal(s, signal.SIG_IGN)\nsignal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())\n"
           "while True:\n    pass\n", A("assert True")),
    # ---- output and disk ----
    Attack("stdout-100mb", "import sys\nsys.stdout.write('x' * 10 ** 8)\n", lambda: S(("", "x" * 10 ** 8))),
    Attack("stderr-100mb", "import sys\nsys.stderr.write('y' * 10 ** 8)\n", lambda: S(("", "y" * 10 ** 8))),
    Attack("verdict-channel-flood", "import os\nchunk = b'z' * 65536\n"
           "for _ in range(1600):\n    os.write(100, chunk)\n", A("assert True")),
    Attack("file-1gb-in-tmp", "import os\nchunk = b'x' * 10 ** 6\nwith open('/tmp/$OUT', 'wb') as f:\n"
           "    for _ in range(1000):\n        f.write(chunk)\nsize = os.path.getsize('/tmp/$OUT')\n",
           A("assert size == 10 ** 9")),
    Attack("fill-tmp", _fill("/tmp/${OUT}"), A("assert written == 200")),
    Attack("fill-dev-shm", _fill("/dev/shm/${OUT}"), A("assert written == 200")),
    Attack("fill-root", _fill("/${OUT}"), A("assert written == 200")),
    # ---- the harness ----
    Attack("sys-exit-before-tests", "import sys\nsys.exit(0)\n", A("assert True")),
    Attack("os-exit-before-tests", "import os\nos._exit(0)\n", A("assert True")),
    Attack("forged-verdicts-stdout", WRONG_ADD + "for guess in ('abc', '0' * 32, 'f' * 32, ''):\n"
           "    print(guess + ' {\"i\": 0, \"ok\": true, \"out\": null, \"err\": null}')\n    print(guess + ' done')\n",
           A(ADD_CASE)),
    Attack("forged-verdicts-channel", WRONG_ADD + "import os\nfor guess in ('abc', '0' * 32, 'f' * 32, ''):\n"
           "    line = guess + ' {\"i\": 0, \"ok\": true, \"out\": null, \"err\": null}\\n' + guess + ' done\\n'\n"
           "    os.write(100, line.encode())\n", A(ADD_CASE)),
    Attack("patch-builtins-exec", WRONG_ADD + "import builtins\nbuiltins.exec = lambda *a, **k: None\n", A(ADD_CASE)),
    Attack("patch-builtins-compile", WRONG_ADD + "import builtins\n_compile = builtins.compile\n"
           "builtins.compile = lambda source, name, mode, *a, **k: _compile('pass', name, mode)\n", A(ADD_CASE)),
    Attack("patch-builtins-enumerate", WRONG_ADD + "import builtins\n"
           "builtins.enumerate = lambda seq, start=0: iter([(0, 'pass')])\n", A(ADD_CASE)),
    Attack("patch-json-and-stdout", WRONG_ADD + "import io, json, sys\n"
           "json.dumps = lambda obj, *a, **k: '{\"i\": 0, \"ok\": true, \"out\": null, \"err\": null}'\n"
           "sys.stdout = sys.__stdout__ = io.StringIO()\n", A(ADD_CASE)),
    Attack("patch-harness-module", WRONG_ADD + "import sys, types\nharness = sys.modules['__main__']\n"
           "for name, obj in list(vars(harness).items()):\n"
           "    if isinstance(obj, types.FunctionType):\n        setattr(harness, name, lambda *a, **k: None)\n"
           "harness._reason = lambda e: 'ok'\n", A(ADD_CASE)),
    Attack("redefine-check-and-assertionerror", WRONG_ADD + "import builtins\ndef check(candidate):\n    pass\n"
           "class AssertionError(Exception):\n    pass\nbuiltins.AssertionError = AssertionError\n",
           A("check(add)", setup="def check(candidate):\n    assert candidate(2, 3) == 5\n")),
    Attack("close-verdict-channel", "import os\nos.close(100)\n", A("assert True")),
    Attack("close-all-fds", "import os\nos.closerange(0, 4096)\n", A("assert True")),
    Attack("read-job-from-stdin", "leaked = open('/proc/self/fd/0', 'rb').read()\n", A("assert b'nonce' in leaked")),
    Attack("read-job-from-init-stdin", "leaked = open('/proc/1/fd/0', 'rb').read()\n", A("assert b'nonce' in leaked")),
    Attack("steal-expected-output", "import sys\nframe = sys._getframe()\n"
           "while frame is not None and 'tests' not in frame.f_locals:\n    frame = frame.f_back\n"
           "print(frame.f_locals['tests']['cases'][0][1])\n", S(("", "the answer is 6 x 7"))),
    Attack("steal-nonce-from-harness-frame", WRONG_ADD + "import sys\nframe = sys._getframe()\n"
           "while frame is not None and 'report' not in frame.f_locals:\n    frame = frame.f_back\n"
           "frame.f_locals['report'](0, True)\n", A(ADD_CASE),
           xfail="assert cases run in the program's interpreter; a program can call the harness's report through "
                 "its frames (a documented reward-hacking limit, not an escape)"),
    # ---- privileges, namespaces, kernel surface ----
    Attack("unshare-userns", LIBC + "r = libc.unshare(0x10000000)\n", A("assert r == 0")),
    Attack("unshare-net-mount", LIBC + "r = libc.unshare(0x40000000 | 0x00020000)\n", A("assert r == 0")),
    Attack("mount-tmpfs", LIBC + "import os\nos.mkdir('/tmp/m')\n"
           "r = libc.mount(b'none', b'/tmp/m', b'tmpfs', 0, None)\n", A("assert r == 0")),
    Attack("setns-init-net", LIBC + "import os\nfd = os.open('/proc/1/ns/net', os.O_RDONLY)\nr = libc.setns(fd, 0)\n",
           A("assert r == 0")),
    Attack("chroot", "import os\nos.mkdir('/tmp/c')\nos.chroot('/tmp/c')\nchrooted = True\n", A("assert chrooted")),
    Attack("setuid-0", "import os\nos.setuid(0)\nuid = os.getuid()\n", A("assert uid == 0")),
    Attack("ptrace-attach-pid-1", LIBC + "import os\n"
           "# outside a PID namespace pid 1 is the machine's init: do not stop it, report the escape instead\n"
           "r = 0 if os.getpid() > 2 else libc.ptrace(16, 1, None, None)\n", A("assert r == 0")),
    Attack("ptrace-seize-trainer", LIBC + "r = libc.ptrace(0x4206, $TRAINER, None, None)\n", A("assert r == 0")),
    Attack("kernel-surface-syscalls", LIBC + "import struct\n"
           "uring = ctypes.create_string_buffer(120)\n"
           "bpf_attr = ctypes.create_string_buffer(struct.pack('=4I', 2, 4, 4, 1) + bytes(56))\n"
           "got = {'keyctl': libc.syscall(250, 0, -3, 1), 'userfaultfd': libc.syscall(323, 1),\n"
           "       'io_uring_setup': libc.syscall(425, 4, uring), 'bpf': libc.syscall(321, 0, bpf_attr, 72),\n"
           "       'add_key': libc.syscall(248, b'user', b'poise', b'x', 1, -3)}\n",
           A("assert any(r >= 0 for r in got.values()), got")),
    # ---- network ----
    Attack("tcp-connect-parent", "import socket\ns = socket.create_connection(('127.0.0.1', $PORT), timeout=1)\n"
           "connected = True\n", A("assert connected")),
    Attack("http-fetch-parent", "import urllib.request\n"
           "body = urllib.request.urlopen('http://127.0.0.1:$PORT/$OUT', timeout=1).read()\n",
           A("assert body == b'poise-ok'")),
    Attack("udp-send-parent", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           "sent = s.sendto(b'$OUT', ('127.0.0.1', $UDP))\n", A("assert sent > 0")),
    Attack("unix-socket-host-path", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('$UNIX')\n"
           "connected = True\n", A("assert connected")),
    Attack("unix-socket-abstract", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(chr(0) + '$ABSTRACT')\n"
           "connected = True\n", A("assert connected")),
    Attack("packet-socket", "import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\nopened = True\n",
           A("assert opened")),
    Attack("dns-lookup", "import socket\nfound = []\nfor host in ('example.com', 'localhost'):\n    try:\n"
           "        found += socket.getaddrinfo(host, 80)\n    except OSError:\n        pass\n", A("assert found")),
    # ---- reading what is not its own ----
    Attack("read-env-secret", "import os\nseen = os.environ.get('$SECRET_ENV')\n", A("assert seen == '$SECRET'")),
    Attack("read-home-file", "data = open('$HOMEFILE').read()\n", A("assert data == '$HOMESECRET'")),
    Attack("read-etc-passwd", "data = open('/etc/passwd').read()\n", A("assert 'root:' in data")),
    Attack("read-etc-hostname", "data = open('/etc/hostname').read().strip()\n", A("assert data == '$HOSTNAME'")),
    Attack("read-repo-file", "data = open('$REPO/pyproject.toml').read()\n", A("assert '[project]' in data")),
    Attack("read-host-via-proc-1-root", "data = open('/proc/1/root$REPO/pyproject.toml').read()\n",
           A("assert '[project]' in data")),
    Attack("read-sys", "import os\nnames = os.listdir('/sys/class/net')\n", A("assert 'lo' in names")),
    Attack("read-trainer-cmdline", "data = open('/proc/$TRAINER/cmdline', 'rb').read()\n",
           A("assert data == $TRAINERCMD")),
    Attack("read-host-pid-1", "data = open('/proc/1/cmdline', 'rb').read()\n",
           A("assert data == $PID1CMD")),
    Attack("parent-chain-reaches-trainer", "import os\nchain, pid = [], os.getpid()\nwhile pid > 1:\n"
           "    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n    chain.append(pid)\n",
           A("assert $TRAINER in chain")),
    # ---- writing outside /tmp ----
    Attack("write-usr", "open('/usr/$OUT', 'w').write('x')\n", A("assert open('/usr/$OUT').read() == 'x'")),
    Attack("write-root", "open('/$OUT', 'w').write('x')\n", A("assert open('/$OUT').read() == 'x'")),
    Attack("write-cwd", "open('$OUT', 'w').write('x')\n", A("assert open('$CWD/$OUT').read() == 'x'")),
    Attack("write-host-tmp", "open('$CANARY', 'a').write('pwn')\n", A("assert open('$CANARY').read() == 'hostpwn'")),
    Attack("write-repo", "open('$REPO/$OUT', 'w').write('x')\n", A("assert open('$REPO/$OUT').read() == 'x'")),
    Attack("write-home", "open('$HOMEDIR/$OUT', 'w').write('x')\n",
           A("assert open('$HOMEFILE').read() == '$HOMESECRET' and open('$HOMEDIR/$OUT').read() == 'x'")),
    # ---- signals ----
    Attack("kill-trainer", "import os, signal\nos.kill($TRAINER, signal.SIGTERM)\nsent = True\n", A("assert sent")),
    Attack("killpg-trainer", "import os, signal\nos.killpg($TRAINERPGID, signal.SIGUSR1)\nsent = True\n",
           A("assert sent")),
    Attack("kill-getppid", "import os, signal\nppid = os.getppid()\nos.kill(ppid, signal.SIGTERM)\n",
           A("assert ppid > 1")),
    Attack("kill-all-sigkill", "import os, signal\n"
           "# outside a PID namespace kill(-1) would take the machine down: report the escape instead\n"
           "if os.getpid() > 2:\n    sent = True\nelse:\n    os.kill(-1, signal.SIGKILL)\n    sent = True\n",
           A("assert sent")),
]

# The harmless attacks whose cases must pass when the same harness runs without the sandbox: the proof that their
# cases detect success (env is not among them: the unsandboxed runner passes a clean environment too).
QUIET = ("read-home-file", "read-etc-passwd", "read-etc-hostname", "read-repo-file", "read-trainer-cmdline",
         "read-host-pid-1", "parent-chain-reaches-trainer", "tcp-connect-parent", "http-fetch-parent",
         "udp-send-parent", "unix-socket-host-path", "unix-socket-abstract", "dns-lookup", "kill-trainer")

GOLD = [
    ("gold-assert", "def add(a, b):\n    return a + b\n", A("assert add(2, 3) == 5", "assert add(-1, 1) == 0")),
    ("gold-check", "def add(a, b):\n    return a + b\n",
     A("check(add)", setup="def check(candidate):\n    assert candidate(2, 3) == 5\n"
                           "    assert candidate(0, 0) == 0\n")),
    ("gold-stdio", "a, b = map(int, input().split())\nprint(a + b)\n", S(("2 3\n", "5\n"), ("10 -4\n", "6"))),
    ("gold-threads-tmp-recursion", "import sys, threading\nfrom concurrent.futures import ThreadPoolExecutor\n"
     "squares = list(ThreadPoolExecutor(4).map(lambda x: x * x, range(10)))\n"
     "open('/tmp/scratch', 'w').write('kept')\nkept = open('/tmp/scratch').read()\nblock = bytearray(50 * 2 ** 20)\n"
     "import multiprocessing\nwith multiprocessing.Lock():  # a POSIX semaphore in /dev/shm\n    locked = True\n"
     "sys.setrecursionlimit(10 ** 5)\nthreading.stack_size(64 * 2 ** 20)\ndepth = []\n"
     "def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)\n"
     "t = threading.Thread(target=lambda: depth.append(down(20000)))\nt.start()\nt.join()\n",
     A("assert squares[9] == 81", "assert kept == 'kept'", "assert depth == [20000]", "assert locked")),
    ("gold-stdio-exit", "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\nsys.exit(0)\n",
     S(("1 2 3\n", "6\n"))),
]


def prelude(index: int) -> str:
    """Names the process `phx<index><token>`: any process of the job that survives shows up in the /proc scan."""
    return f"try:\n    open('/proc/self/comm', 'w').write('{comm(index)}')\nexcept OSError:\n    pass\n"


def comm(index: int) -> str:
    return f"phx{index:03d}{TOKEN}"


def out_name(index: int) -> str:
    return f"poise_hostile_{TOKEN}_{index:03d}"


def substitute(value, mapping):
    if isinstance(value, str):
        return string.Template(value).substitute(mapping)
    if isinstance(value, list):
        return [substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, mapping) for k, v in value.items()}
    return value


def marked_processes() -> dict[int, list[str]]:
    """Processes of the machine that carry a job's marker (its comm or its file name in the arguments), by job."""
    found: dict[int, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for index in range(len(ATTACKS) + len(GOLD) + 1):
            if name == comm(index) or out_name(index) in args:
                found.setdefault(index, []).append(f"{pid} {name} {args[:80]}")
    return found


class _Server(http.server.ThreadingHTTPServer):
    connections = 0

    def process_request(self, request, client_address):
        type(self).connections += 1
        super().process_request(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"poise-ok")

    def log_message(self, *args):
        pass


@dataclass
class Trainer:
    """What the test process (the "trainer") set up around the batch, and what it saw afterwards."""

    context: dict
    results: dict = field(default_factory=dict)
    processes: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    signals: dict = field(default_factory=dict)
    received: dict = field(default_factory=dict)
    victim_alive: bool = False
    canary: str = ""
    batch_seconds: float = 0.0
    sandbox: LocalSandbox | None = None


def _host_roots(ctx: dict) -> list[str]:
    return ["/", "/tmp", "/usr", "/dev/shm", ctx["REPO"], ctx["CWD"], ctx["HOMEDIR"], str(Path.home())]


@pytest.fixture(scope="module")
def hostile():
    """Sets up the trainer side (secret in the environment and in a home folder, TCP/HTTP, UDP and Unix listeners, a
    canary in the host /tmp, a victim process, signal counters), runs every hostile and gold job as one batch, then
    records what each left behind."""
    host = Path(tempfile.mkdtemp(prefix=f"poise_hostile_{TOKEN}_host_", dir="/tmp"))
    homedir = Path(tempfile.mkdtemp(prefix=f"poise_hostile_{TOKEN}_home_", dir=Path.home()))
    home_secret = secrets.token_hex(8)
    (homedir / "secret.txt").write_text(home_secret)
    canary = host / "canary"
    canary.write_text("host")
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path, abstract = str(host / "sock"), f"poise_hostile_{TOKEN}_abstract"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen()
    unix_abs = socket.socket(socket.AF_UNIX)
    unix_abs.bind("\0" + abstract)
    unix_abs.listen()
    victim = subprocess.Popen(["sleep", "300"])
    hostname = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else socket.gethostname()
    ctx = {"TOKEN": TOKEN, "PORT": server.server_address[1], "UDP": udp.getsockname()[1], "UNIX": unix_path,
           "ABSTRACT": abstract, "TRAINER": os.getpid(), "TRAINERPGID": os.getpgid(0),
           "TRAINERCMD": repr(Path("/proc/self/cmdline").read_bytes()),
           "PID1CMD": repr(Path("/proc/1/cmdline").read_bytes()), "SECRET_ENV": SECRET_ENV,
           "SECRET": secrets.token_hex(8), "HOMEDIR": str(homedir), "HOMEFILE": str(homedir / "secret.txt"),
           "HOMESECRET": home_secret, "HOSTNAME": hostname, "REPO": str(REPO), "CWD": os.getcwd(),
           "CANARY": str(canary)}
    counts = {int(s): 0 for s in SIGNALS}

    def count(signum, frame):
        counts[signum] += 1

    old_env = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = ctx["SECRET"]
    old_handlers = {s: signal.signal(s, count) for s in SIGNALS}
    trainer = Trainer(ctx)
    try:
        sb = LocalSandbox(timeout=T, workers=2)
        jobs = []
        for i, a in enumerate(ATTACKS):
            mapping = {**ctx, "OUT": out_name(i)}
            tests = a.tests() if callable(a.tests) else substitute(a.tests, mapping)
            jobs.append(CodeJob(prelude(i) + substitute(a.program, mapping), tests))
        for j, (_, program, tests) in enumerate(GOLD):
            jobs.append(CodeJob(prelude(len(ATTACKS) + j) + program, tests))
        start = time.monotonic()
        got = sb.run(jobs)
        trainer.batch_seconds = time.monotonic() - start
        names = [a.id for a in ATTACKS] + [g[0] for g in GOLD]
        trainer.results = dict(zip(names, got))
        deadline = time.monotonic() + 1.0  # processes torn down with their namespace get a moment to be reaped
        while (left := marked_processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        trainer.processes = {names[i]: procs for i, procs in left.items()}
        for i, a in enumerate(ATTACKS):
            trainer.files[a.id] = [p for root in _host_roots(ctx) for p in glob.glob(f"{root}/{out_name(i)}*")]
        trainer.signals = {signal.Signals(s).name: n for s, n in counts.items() if n}
        udp.setblocking(False)
        unix.setblocking(False)
        unix_abs.setblocking(False)
        trainer.received = {"tcp/http connections": _Server.connections, "udp datagrams": _drain(udp.recv),
                            "unix connections": _drain(unix.accept), "abstract connections": _drain(unix_abs.accept)}
        trainer.victim_alive = victim.poll() is None
        trainer.canary = canary.read_text()
        trainer.sandbox = sb
        yield trainer
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if old_env is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = old_env
        victim.kill()
        victim.wait()
        server.shutdown()
        server.server_close()
        for s in (udp, unix, unix_abs):
            s.close()
        shutil.rmtree(host, ignore_errors=True)
        shutil.rmtree(homedir, ignore_errors=True)
        for i in range(len(ATTACKS)):  # whatever a failed run left (the tests above report it)
            for p in (p for root in _host_roots(ctx) for p in glob.glob(f"{root}/{out_name(i)}*")):
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.unlink(p)


def _drain(receive) -> int:
    n = 0
    while True:
        try:
            got = receive(65536) if receive.__name__ == "recv" else receive()
        except (BlockingIOError, OSError):
            return n
        n += 1
        if isinstance(got, tuple):
            got[0].close()


def _mapped_to_root() -> bool:
    """Whether the sandbox's programs run as root outside (LocalSandbox._drop_root could not switch bwrap to
    SANDBOX_UID: this process is root and bwrap or the Python installation is out of other users' reach)."""
    from poise.data.code.sandbox import _python, _reachable_by_others, find_bwrap

    return os.geteuid() == 0 and not all(_reachable_by_others(p) for p in [find_bwrap(), *_python()[1]])


def _params():
    def marks(a: Attack):
        if not a.xfail or (a.xfail_only_as_root and not _mapped_to_root()):
            return ()
        return pytest.mark.xfail(strict=True, reason=a.xfail)
    return [pytest.param(a, id=a.id, marks=marks(a)) for a in ATTACKS]


def test_the_table_is_large_and_its_names_unique():
    assert len(ATTACKS) >= 32 and len({a.id for a in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize("attack", _params())
def test_a_hostile_program_scores_zero(hostile, attack):
    r = hostile.results[attack.id]
    assert r.passed == 0, f"{attack.id}: {r.passed}/{r.total} passed ({r.status}: {r.detail})"


@pytest.mark.parametrize("attack", [pytest.param(a, id=a.id) for a in ATTACKS])
def test_a_hostile_program_ends_in_time_and_leaves_nothing(hostile, attack):
    r = hostile.results[attack.id]
    assert r.seconds <= T + 1.0, f"{attack.id} took {r.seconds:.2f} s ({r.status})"
    assert attack.id not in hostile.processes, hostile.processes.get(attack.id)
    assert hostile.files[attack.id] == []
    assert len(r.detail) <= 1000 and all(o is None or len(o) <= hostile.sandbox.out_limit for o in r.outputs)


def test_the_trainer_got_no_signal_connection_or_file_and_its_neighbours_live(hostile):
    assert hostile.signals == {}
    assert hostile.received == {"tcp/http connections": 0, "udp datagrams": 0, "unix connections": 0,
                                "abstract connections": 0}
    assert hostile.victim_alive and hostile.canary == "host"
    assert os.environ[SECRET_ENV] == hostile.context["SECRET"]  # the trainer's own state is untouched
    assert sorted(hostile.processes) == []  # gold jobs included
    # the table ran 2 jobs at a time: its wall time is well under the sum of the jobs' times
    assert hostile.batch_seconds < 0.75 * sum(r.seconds for r in hostile.results.values())


@pytest.mark.parametrize("name", [g[0] for g in GOLD])
def test_a_correct_program_run_beside_them_passes(hostile, name):
    r = hostile.results[name]
    assert (r.passed, r.status) == (r.total, "ok"), r.detail


def test_the_sandbox_still_runs_a_correct_program_after_the_batch(hostile):
    sb = hostile.sandbox
    before = dict(sb.stats)
    r = sb.run([CodeJob(GOLD[0][1], GOLD[0][2]), CodeJob(GOLD[2][1], GOLD[2][2])])
    assert [(x.passed, x.total, x.status) for x in r] == [(2, 2, "ok"), (2, 2, "ok")]
    assert sb.stats["runs"] == before["runs"] + 2 and sb.stats["errors"] == before["errors"]
    assert before["timeouts"] >= 5  # the endless programs of the table were counted as timeouts


def test_the_process_scan_sees_a_running_job_and_nothing_once_it_ended():
    """The scan that finds leftovers is not blind: a job that sleeps is seen under its marker while it runs."""
    index = len(ATTACKS) + len(GOLD)
    sb, out = LocalSandbox(timeout=T), []
    job = CodeJob(prelude(index) + "import time\ntime.sleep(1.2)\n", A("assert True"))
    runner = threading.Thread(target=lambda: out.extend(sb.run([job])))
    runner.start()
    seen, deadline = False, time.monotonic() + 1.0
    while not seen and time.monotonic() < deadline:
        seen = index in marked_processes()
        time.sleep(0.02)
    runner.join()
    assert seen and out[0].passed == 1
    assert index not in marked_processes()


def test_quiet_attacks_do_succeed_without_the_sandbox(hostile):
    """The same harness as a plain subprocess (`sandbox="none"`): each harmless attack's case passes, so its 0 in
    the sandbox is the sandbox's doing."""
    with pytest.warns(UserWarning, match="WITHOUT a sandbox"):
        plain = LocalSandbox(timeout=5, sandbox="none", workers=2)
    ids = {a.id: i for i, a in enumerate(ATTACKS)}
    quiet = [q for q in QUIET if q != "read-etc-hostname" or Path("/etc/hostname").exists()]
    jobs = []
    for name in quiet:
        i = ids[name]
        mapping = {**hostile.context, "OUT": out_name(i)}
        a = ATTACKS[i]
        jobs.append(CodeJob(substitute(a.program, mapping),
                            a.tests() if callable(a.tests) else substitute(a.tests, mapping)))
    got = plain.run(jobs)
    assert {name: (r.passed, r.total) for name, r in zip(quiet, got)} == {name: (1, 1) for name in quiet}
