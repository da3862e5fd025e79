"""A second seccomp filter, loaded inside the kernel before any user code runs; it fails closed.

Docker 20.10's default profile still allows io_uring (whose submissions bypass per-syscall filtering), and
bubblewrap installs no filter at all. This denies io_uring, namespace and mount syscalls, keyrings, BPF,
perf, userfaultfd, module loading and ptrace, and makes clone3 report ENOSYS so libc falls back to clone, whose
CLONE_NEWUSER flag can be checked. It uses the system's libseccomp through ctypes: no compiler, no package.

Every libseccomp call's return code is checked, and ``verify`` proves afterwards that this very filter is in
force (a probe rule answers with an errno nothing else gives), so a library that is missing, broken or lying
raises SeccompError instead of leaving a kernel unfiltered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from typing import Any

DENIED = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "ptrace",
    "process_vm_writev",
)
# Present on every Linux architecture: a library that cannot resolve these is not to be trusted with the rest.
_MUST_RESOLVE = ("unshare", "setns", "mount", "ptrace", "bpf", "keyctl", "clone", "close")

_ACT_ALLOW = 0x7FFF0000
_FLTATR_CTL_TSYNC = 4
_CMP_EQ = 4
_CMP_MASKED_EQ = 7
_CLONE_NEWUSER = 0x10000000

# The probe: close() of this (never valid) fd answers PROBE_ERRNO under this filter and EBADF without it. No
# other filter (Docker's, gVisor's) gives that answer, so seeing it proves this filter, not just any, is loaded.
PROBE_FD = 0x7FFF_F1D0
PROBE_ERRNO = errno.ENOTUNIQ


class SeccompError(RuntimeError):
    """The filter could not be built, loaded or proven to be in force."""


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def load_library() -> Any:
    """The system's libseccomp, its functions typed; SeccompError when it is missing."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as first:
        # find_library spawns ldconfig: only worth its cost when the usual soname is missing.
        path = ctypes.util.find_library("seccomp")
        if path is None:
            raise SeccompError(f"libseccomp not found ({first})") from None
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            raise SeccompError(f"libseccomp could not be loaded ({exc})") from None
    try:
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_attr_set.restype = ctypes.c_int
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
    except AttributeError as exc:
        raise SeccompError(f"libseccomp lacks a function: {exc}") from None
    return lib


def _check(rc: int, what: str) -> None:
    # libseccomp returns 0 or a negated errno.
    if rc != 0:
        reason = os.strerror(-rc) if isinstance(rc, int) and rc < 0 else "unexpected return"
        raise SeccompError(f"{what} returned {rc} ({reason})")


def install(lib: Any | None = None) -> None:
    """Load the filter on every thread of this process; SeccompError on any failure (nothing is half-loaded:
    libseccomp installs the whole filter in its one ``seccomp_load`` call, or none of it)."""
    if lib is None:
        lib = load_library()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompError("seccomp_init failed")
    try:
        # Every thread of the kernel (shell, control, iopub, heartbeat), not only this one.
        _check(lib.seccomp_attr_set(ctx, _FLTATR_CTL_TSYNC, 1), "seccomp_attr_set(TSYNC)")
        numbers: dict[str, int] = {}
        for name in (*DENIED, "clone3", "clone", "close"):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if not isinstance(nr, int) or nr < 0:
                if name in _MUST_RESOLVE:
                    raise SeccompError(f"libseccomp does not know the syscall {name}")
                continue  # not on this architecture
            numbers[name] = nr
        for name in DENIED:
            if name in numbers:
                rule = f"seccomp_rule_add_array({name})"
                _check(lib.seccomp_rule_add_array(ctx, _act_errno(errno.EPERM), numbers[name], 0, None), rule)
        if "clone3" in numbers:
            act = _act_errno(errno.ENOSYS)
            _check(lib.seccomp_rule_add_array(ctx, act, numbers["clone3"], 0, None), "seccomp_rule_add_array(clone3)")
        newuser = _ArgCmp(0, _CMP_MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER)
        _check(
            lib.seccomp_rule_add_array(ctx, _act_errno(errno.EPERM), numbers["clone"], 1, ctypes.byref(newuser)),
            "seccomp_rule_add_array(clone)",
        )
        probe = _ArgCmp(0, _CMP_EQ, PROBE_FD, 0)
        _check(
            lib.seccomp_rule_add_array(ctx, _act_errno(PROBE_ERRNO), numbers["close"], 1, ctypes.byref(probe)),
            "seccomp_rule_add_array(close probe)",
        )
        _check(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def _seccomp_modes(proc: str = "/proc/self/task") -> dict[str, str]:
    """The ``Seccomp:`` field of every thread of this process, by thread id."""
    modes: dict[str, str] = {}
    for tid in os.listdir(proc):
        try:
            with open(os.path.join(proc, tid, "status"), encoding="ascii", errors="replace") as f:
                status = f.read()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        mode = next((line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Seccomp:")), "")
        modes[tid] = mode
    return modes


def verify(proc: str = "/proc/self/task", probe: Callable[[int], None] = os.close) -> None:
    """Raise SeccompError unless this filter is in force on the calling thread and a filter on every thread."""
    try:
        probe(PROBE_FD)
    except OSError as exc:
        if exc.errno != PROBE_ERRNO:
            answer = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            raise SeccompError(f"the filter is not in force (the probe answered {answer})") from None
    else:
        raise SeccompError("the filter is not in force (the probe fd closed)")
    try:
        modes = _seccomp_modes(proc)
    except OSError as exc:
        raise SeccompError(f"cannot read the threads' seccomp mode: {exc}") from None
    unfiltered = sorted(tid for tid, mode in modes.items() if mode != "2")
    if not modes or unfiltered:
        raise SeccompError(f"threads without a seccomp filter: {', '.join(unfiltered) or 'none listed'}")
