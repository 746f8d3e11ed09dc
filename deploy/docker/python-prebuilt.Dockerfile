# The same image as python.Dockerfile, from wheels already built on this host
# (`pip wheel "./python[twisted]" -w target/python-wheels`), for hosts whose
# Docker builds cannot reach PyPI (CI here: deploy/test/compose). Select it with
#   OCS_PYTHON_DOCKERFILE=deploy/docker/python-prebuilt.Dockerfile docker compose build pyfaker
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}
COPY target/python-wheels/ /wheels/
RUN ["python3", "-m", "pip", "install", "--no-cache-dir", "--no-index", "--find-links", "/wheels", "ocs-nats[twisted]"]
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
CMD ["ocs-nats-fake-data-agent", "--help"]
