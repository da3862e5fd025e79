# The service itself (not the sandbox image), for compose.yaml. Build from the repository root:
#   docker build -f images/service.Dockerfile -t executor-service .
# Offline, pass the base images/build made:  --build-arg BASE_IMAGE=executor-base:bookworm-<hash>
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
WORKDIR /opt/executor-service
COPY pyproject.toml README.md ./
COPY executor ./executor
COPY sandboxes ./sandboxes
RUN python3 -m venv /opt/service && /opt/service/bin/pip install '.[postgres]'
ENV PATH=/opt/service/bin:$PATH \
    EXECUTOR_HOST=0.0.0.0 \
    EXECUTOR_DATA_DIR=/var/lib/executor \
    EXECUTOR_RUN_DIR=/var/lib/executor/run \
    EXECUTOR_BACKEND=docker
EXPOSE 8000
CMD ["executor", "serve"]
