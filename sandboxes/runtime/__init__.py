"""Code that runs inside every kernel, at start-up, before any user code.

Only the standard library and what ipykernel brings may be imported here: this package is bound into the
jail on its own and must not pull in the service.
"""

from __future__ import annotations

import glob
import os
import shutil


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


SECCOMP = "not loaded"


def setup() -> None:
    """Harden and prepare the kernel before any user code: seccomp filter, matplotlib inline as PNG, caches.

    Called once via ``exec_lines``. The filter goes first so nothing after it runs unfiltered.
    """
    global SECCOMP
    from . import harden

    SECCOMP = harden.install()
    _copy_font_cache()
    _configure_ipython()
