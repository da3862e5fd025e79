"""What every jailed sandbox is told about egress: the proxy socket in its run dir, the relay port, proxy env.

The service binds one forward proxy per sandbox at ``<run dir>/egress.sock`` (``Sandbox.egress_socket`` on the
host); the runtime's relay (``sandboxes/runtime/relay.py``) exposes it inside at ``127.0.0.1:EGRESS_PORT``.
"""

from __future__ import annotations

SOCKET_NAME = "egress.sock"
EGRESS_PORT = 3128
# Where `pip install NAME` puts packages inside a sandbox; the runtime creates it, PYTHONPATH ends with it.
PIP_TARGET = "/tmp/site-packages"


def egress_env(run_dir_inside: str) -> dict[str, str]:
    """The environment of a sandbox in its own net namespace whose run dir is ``run_dir_inside`` inside."""
    proxy = f"http://127.0.0.1:{EGRESS_PORT}"
    no_proxy = "localhost,127.0.0.1,::1"
    env = {
        "EXECUTOR_EGRESS_SOCKET": f"{run_dir_inside}/{SOCKET_NAME}",
        "EXECUTOR_EGRESS_PORT": str(EGRESS_PORT),
        "PIP_TARGET": PIP_TARGET,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = proxy
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env
