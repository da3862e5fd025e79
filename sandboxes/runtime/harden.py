"""A second seccomp filter, loaded inside the kernel before any user code runs.

Docker 20.10's default profile still allows io_uring (whose submissions bypass per-syscall filtering), and
bubblewrap installs no filter at all. This denies io_uring, namespace and mount syscalls, keyrings, BPF,
perf, userfaultfd, module loading and ptrace, and makes clone3 report ENOSYS so libc falls back to clone, whose
CLONE_NEWUSER flag can be checked. It uses the system's libseccomp through ctypes: no compiler, no package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno

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

_ACT_ALLOW = 0x7FFF0000
_FLTATR_CTL_TSYNC = 4
_CMP_MASKED_EQ = 7
_CLONE_NEWUSER = 0x10000000


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def install() -> str:
    """Load the filter on every thread of this process. Returns what was done, for diagnostics."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        # find_library spawns ldconfig: only worth its cost when the usual soname is missing.
        path = ctypes.util.find_library("seccomp")
        if path is None:
            return "unavailable: libseccomp not found"
        lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]

    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        return "failed: seccomp_init"
    try:
        # Every thread of the kernel (shell, control, iopub, heartbeat), not only this one.
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_TSYNC, 1)
        for name in DENIED:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not on this architecture
            lib.seccomp_rule_add_array(ctx, _act_errno(errno.EPERM), nr, 0, None)
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            lib.seccomp_rule_add_array(ctx, _act_errno(errno.ENOSYS), clone3, 0, None)
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        if clone >= 0:
            cmp = _ArgCmp(0, _CMP_MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER)
            lib.seccomp_rule_add_array(ctx, _act_errno(errno.EPERM), clone, 1, ctypes.byref(cmp))
        rc = lib.seccomp_load(ctx)
        return "loaded" if rc == 0 else f"failed: seccomp_load returned {rc}"
    finally:
        lib.seccomp_release(ctx)
