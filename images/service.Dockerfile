# The service itself (not the sandbox image), for compose.yaml.
#
# Offline (no registry, no package index inside the build): scripts/service-image builds it on the base the sandbox
# image was built on, from a wheelhouse it downloads on the host, with `docker build --network none`.
# With a registry and PyPI, from the repository root:
#   docker build -f images/service.Dockerfile -t executor-service .        (or: docker-compose build)
# The base only needs a python3 >= 3.11 with the venv module (python:3.x-slim, or the Debian 12 base of images/build).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1 LANG=C.UTF-8
WORKDIR /opt/executor-service
# 1. The dependencies, from the wheelhouse scripts/service-image stages: a layer that stays cached while only the
#    service's code changes. (The [s]/[n] globs let a plain build from the repository go on without them; the root
#    .dockerignore leaves images/.cache out of that context anyway.)
COPY images/.cache/service-wheel[s] /tmp/wheels/
RUN set -eu; \
    PYV=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
    python3 -m venv /opt/service; \
    if ls /tmp/wheels/py$PYV/*.whl >/dev/null 2>&1; then \
        echo "installing the dependencies from the wheelhouse for Python $PYV (no network)"; \
        /opt/service/bin/pip install --no-index --no-deps /tmp/wheels/py$PYV/*.whl; \
    fi; \
    rm -rf /tmp/wheels /root/.cache
# 2. The service: its wheel when staged (then `pip check` proves the wheelhouse had every dependency), else from
#    these sources and the package index.
COPY pyproject.toml README.md ./
COPY executor ./executor
COPY sandboxes ./sandboxes
COPY images/.cache/service-ow[n] /tmp/own/
RUN set -eu; \
    if ls /tmp/own/executor-*.whl >/dev/null 2>&1; then \
        /opt/service/bin/pip install --no-index --no-deps /tmp/own/executor-*.whl; \
        /opt/service/bin/pip check; \
    else \
        echo "no staged wheel: installing from the package index"; \
        /opt/service/bin/pip install '.[postgres]'; \
    fi; \
    rm -rf /tmp/own /root/.cache
ENV PATH=/opt/service/bin:$PATH \
    EXECUTOR_HOST=0.0.0.0 \
    EXECUTOR_DATA_DIR=/var/lib/executor \
    EXECUTOR_RUN_DIR=/var/lib/executor/run \
    EXECUTOR_BACKEND=docker
EXPOSE 8000
CMD ["executor", "serve"]
