"""Code that runs inside every kernel, at start-up, before any user code.

Only the standard library and what ipykernel brings may be imported here: this package is bound into the
jail on its own and must not pull in the service.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from . import streams

# The kernel process exits with this code when its seccomp filter is not in force: the service sees a kernel
# that died while starting (with the one line below on its stderr) and never hands the sandbox out.
SECCOMP_FAILED_EXIT = 86

SECCOMP = "not loaded"


def _copy_font_cache() -> None:
    # The service builds matplotlib's font list once; copying it saves each new kernel ~1 s on its first plot.
    src = os.environ.get("EXECUTOR_FONT_CACHE")
    dst = os.environ.get("MPLCONFIGDIR")
    if not src or not dst or not os.path.isdir(src):
        return
    os.makedirs(dst, exist_ok=True)
    for path in glob.glob(os.path.join(src, "fontlist-*.json")):
        shutil.copy(path, dst)


def _configure_ipython() -> None:
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        return
    # PNG only: one image per figure, which is what chat clients render.
    ip.run_line_magic("config", "InlineBackend.figure_formats = {'png'}")
    ip.run_line_magic("config", "InlineBackend.close_figures = True")


def _process_stderr() -> int:
    # ipykernel points fd 2 at a pipe that becomes iopub messages; fileno() of its stream is a copy of the
    # process's real stderr, which is what the service reads when a start fails.
    try:
        fd = sys.stderr.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, OSError, ValueError):
        return 2


def _die(message: str) -> None:
    try:
        os.write(_process_stderr(), f"sandbox runtime: {message}\n".encode(errors="replace"))
    finally:
        os._exit(SECCOMP_FAILED_EXIT)


def load_filter(*, required: bool = True) -> None:
    """Load the seccomp filter and prove it is in force; without it the kernel ends here when ``required``.

    ``required`` comes from the kernel's command line (the service's choice), never from its environment,
    which the caller of the API controls.
    """
    global SECCOMP
    from . import harden as _harden

    try:
        _harden.install()
        _harden.verify()
    except _harden.SeccompError as exc:
        SECCOMP = f"failed: {exc}"
        if required:
            _die(f"the seccomp filter is not in force, refusing to run code: {exc}")
        return
    except BaseException as exc:  # fail closed on anything unexpected too
        SECCOMP = f"failed: {exc!r}"
        if required:
            _die(f"the seccomp filter could not be installed, refusing to run code: {exc!r}")
        return
    SECCOMP = "loaded"


def _prepare_pip_target() -> None:
    # `pip install NAME` installs into PIP_TARGET (a writable dir on PYTHONPATH, set by the backend). Python
    # looked for it at start-up, when it did not exist, and remembered that: create it and drop the memo, so a
    # package installed later imports without a restart (after importlib.invalidate_caches(), the user's call).
    target = os.environ.get("PIP_TARGET")
    if not target:
        return
    try:
        os.makedirs(target, exist_ok=True)
    except OSError:
        return
    sys.path_importer_cache.pop(target, None)
    if target not in sys.path:
        sys.path.append(target)


def _start_egress_relay() -> None:
    # Only where the backend put the sandbox in its own net namespace and a proxy socket in its run dir.
    path = os.environ.get("EXECUTOR_EGRESS_SOCKET")
    port = os.environ.get("EXECUTOR_EGRESS_PORT")
    if not path or not port:
        return
    from . import relay

    try:
        relay.start(path, int(port))
    except (OSError, ValueError) as exc:
        # No egress is not worth refusing to run code for: the kernel runs on, offline, and says why.
        os.write(_process_stderr(), f"sandbox runtime: the egress relay did not start: {exc}\n".encode())


def setup(*, seccomp: bool = True) -> None:
    """Harden and prepare the kernel before any user code: seccomp filter, the egress relay, binary
    stdout/stderr, thread output routed to the cell that started the thread, matplotlib inline as PNG, caches,
    the pip target dir.

    Called once via ``exec_lines``. The filter goes first so nothing after it runs unfiltered; IPython swallows
    exceptions from ``exec_lines``, so a failed filter ends the process (``os._exit``) instead of raising.
    """
    load_filter(required=seccomp)
    _start_egress_relay()
    streams.add_binary_buffers()
    streams.route_thread_output()
    _copy_font_cache()
    _prepare_pip_target()
    _configure_ipython()
