"""The seccomp filter of the code sandbox: a classic-BPF program, handed to bubblewrap (`bwrap --seccomp FD`), that
the kernel runs on every system call of the sandboxed program.

It allows everything except:

- **new processes**: fork, vfork, and clone without CLONE_THREAD fail with EPERM (threads are allowed; clone3 fails
  with ENOSYS so that the C library falls back to clone, where the flags can be read). A fork bomb therefore stops at
  its first fork, whatever uid the sandbox runs as (RLIMIT_NPROC does not bind a process whose user is root outside
  its user namespace, as in containers and CI).
- **sockets**: socket and socketpair fail with EPERM (the network namespace already has no route out).
- **escape and kernel-attack surface**: ptrace, process_vm_readv/writev, mount, umount2, pivot_root, chroot, unshare,
  setns, keyctl, add_key, request_key, bpf, perf_event_open, userfaultfd, io_uring_*, kexec_*, module loading,
  open_by_handle_at, name_to_handle_at, pidfd_getfd, acct, swapon/off, reboot, sethostname, setdomainname,
  iopl, ioperm: EPERM.
- **another architecture's calls** (x86-64's x32 ABI, or a call made with another audit arch): the process is
  killed.

Written for x86-64 (tested here) and aarch64 (same filter, numbers from the kernel's unistd tables; not run on an
aarch64 machine here). Other architectures raise `UnsupportedArch`.
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data: nr, arch, instruction_pointer, args[6]
CLONE_THREAD = 0x00010000

_X86_64 = {"audit_arch": 0xC000003E, "x32_bit": 0x40000000, "clone": 56, "clone3": 435, "deny": {
    "fork": 57, "vfork": 58, "socket": 41, "socketpair": 53, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "pidfd_getfd": 438, "acct": 163, "swapon": 167,
    "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173}}
_AARCH64 = {"audit_arch": 0xC00000B7, "x32_bit": None, "clone": 220, "clone3": 435, "deny": {
    "socket": 198, "socketpair": 199, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
    "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "keyctl": 219,
    "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 104,
    "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
    "open_by_handle_at": 265, "name_to_handle_at": 264, "pidfd_getfd": 438, "acct": 89, "swapon": 224,
    "swapoff": 225, "reboot": 142, "sethostname": 161, "setdomainname": 162}}
TABLES = {"x86_64": _X86_64, "aarch64": _AARCH64}


class UnsupportedArch(RuntimeError):
    """No seccomp table for this machine's architecture."""


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def bpf_program(machine: str | None = None) -> bytes:
    """The filter as raw `struct sock_filter` instructions (8 bytes each), what `bwrap --seccomp FD` reads."""
    machine = machine or platform.machine()
    table = TABLES.get(machine)
    if table is None:
        raise UnsupportedArch(f"the code sandbox's seccomp filter has no table for {machine}; supported: "
                              f"{', '.join(TABLES)}")
    eperm, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS
    prog = [_ins(_LD_W_ABS, 0, 0, _OFF_ARCH), _ins(_JEQ_K, 1, 0, table["audit_arch"]),  # another ABI: killed
            _ins(_RET_K, 0, 0, _KILL_PROCESS), _ins(_LD_W_ABS, 0, 0, _OFF_NR)]
    if table["x32_bit"] is not None:  # x32 system calls carry this bit
        prog += [_ins(_JGE_K, 0, 1, table["x32_bit"]), _ins(_RET_K, 0, 0, _KILL_PROCESS)]
    for nr in sorted(table["deny"].values()):
        prog += [_ins(_JEQ_K, 0, 1, nr), _ins(_RET_K, 0, 0, eperm)]
    prog += [_ins(_JEQ_K, 0, 1, table["clone3"]), _ins(_RET_K, 0, 0, enosys),
             _ins(_JEQ_K, 0, 3, table["clone"]),       # clone: read its flags
             _ins(_LD_W_ABS, 0, 0, _OFF_ARG0),
             _ins(_JSET_K, 1, 0, CLONE_THREAD),         # a thread: allowed
             _ins(_RET_K, 0, 0, eperm),                 # a process: refused
             _ins(_RET_K, 0, 0, _ALLOW)]
    return b"".join(prog)
