"""Package layers: read-only directories of installed packages that a backend puts on a kernel's ``sys.path``.

A layer is built on the host (by the service, see ``executor/tools/layers.py``) for the interpreter the kernel
runs, which this module describes as a :class:`LayerTarget`: the local backend's kernels run the service's own
Python, the Docker backend's run the image's (probed once, with the stdlib-only :data:`PROBE`). Backends bind each
layer read-only at ``/opt/executor/layers/<n>`` and list those paths in ``PYTHONPATH`` after the runtime's own dir.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxes.base import SandboxError

# Where layer n is seen inside a jail or container.
LAYERS_ROOT = "/opt/executor/layers"

# Runs in the target interpreter (standard library only) and prints what a wheel must match.
PROBE = (
    "import json, platform, sys\n"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], 'implementation': sys.implementation.name,"
    " 'abiflags': getattr(sys, 'abiflags', ''), 'libc': list(platform.libc_ver()), 'machine': platform.machine()}))\n"
)


def probe() -> dict[str, Any]:
    """What :data:`PROBE` prints, for the interpreter running this code."""
    return {
        "version": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "implementation": sys.implementation.name,
        "abiflags": getattr(sys, "abiflags", ""),
        "libc": list(platform.libc_ver()),
        "machine": platform.machine(),
    }


@dataclass(frozen=True, slots=True)
class LayerTarget:
    """The interpreter a layer is built for, in pip's terms (``--python-version/--implementation/--abi/--platform``)."""

    python_version: str  # "3.11"
    implementation: str  # "cp"
    abi: str  # "cp311"
    platforms: tuple[str, ...]  # newest first: manylinux_2_36_x86_64, ..., manylinux1_x86_64

    @property
    def key(self) -> str:
        """Part of a layer's cache key: layers for equal keys are interchangeable."""
        return f"{self.implementation}{self.python_version}-{self.abi}-{self.platforms[0] if self.platforms else ''}"

    def pip_options(self) -> list[str]:
        """The options that make pip on the host pick wheels for this interpreter (needs ``--only-binary``)."""
        args = ["--python-version", self.python_version, "--implementation", self.implementation, "--abi", self.abi]
        for p in self.platforms:
            args += ["--platform", p]
        return args


def _manylinux(major: int, minor: int, arch: str) -> tuple[str, ...]:
    # PEP 600 tags for every glibc up to this one, and the legacy aliases (PEP 513/571/599) older wheels carry.
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    for alias, at in (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)):
        if major == 2 and minor >= at:
            tags.append(f"{alias}_{arch}")
    return tuple(tags)


def target_from_probe(info: dict[str, Any]) -> LayerTarget:
    """A LayerTarget from what :data:`PROBE` printed; SandboxError for interpreters wheels cannot target here."""
    try:
        version = str(info["version"])
        impl = str(info["implementation"])
        libc, libc_version = (str(x) for x in info["libc"])
        machine = str(info["machine"])
        abiflags = str(info.get("abiflags") or "")
    except (KeyError, TypeError, ValueError) as exc:
        raise SandboxError(f"the interpreter probe printed something unexpected: {info!r:.200}") from exc
    if impl != "cpython":
        raise SandboxError(f"package layers need CPython, the kernel runs {impl}")
    if libc != "glibc":
        raise SandboxError(f"package layers need a glibc interpreter, the kernel's libc is {libc or 'unknown'}")
    try:
        major, minor = (int(x) for x in libc_version.split(".")[:2])
    except ValueError:
        raise SandboxError(f"unreadable glibc version {libc_version!r}") from None
    nodot = version.replace(".", "")
    return LayerTarget(
        python_version=version,
        implementation="cp",
        abi=f"cp{nodot}{abiflags}",
        platforms=_manylinux(major, minor, machine),
    )


def parse_probe_output(output: bytes) -> LayerTarget:
    """A LayerTarget from the raw output of :data:`PROBE` (its last line)."""
    lines = output.decode(errors="replace").strip().splitlines()
    try:
        info = json.loads(lines[-1]) if lines else None
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise SandboxError(f"the interpreter probe printed no JSON: {output[-200:]!r}")
    return target_from_probe(info)


def native_target() -> LayerTarget:
    """The target of the interpreter running the service (the local backend's kernels)."""
    return target_from_probe(probe())


def check_layers(layers: Sequence[Path]) -> list[Path]:
    """Resolved layer dirs; SandboxError for one that is not an existing absolute directory."""
    out: list[Path] = []
    for layer in layers:
        path = Path(layer)
        if not path.is_absolute() or not path.is_dir():
            raise SandboxError(f"package layer {str(path)!r} is not an existing absolute directory")
        out.append(path.resolve())
    return out


def layer_mounts(layers: Sequence[Path]) -> list[tuple[Path, str]]:
    """(host dir, path inside the sandbox) per layer, in sys.path order."""
    return [(path, f"{LAYERS_ROOT}/{i}") for i, path in enumerate(check_layers(layers))]
