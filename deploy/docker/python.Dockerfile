# The Python agents' image: the ocs-nats Python package (python/) and its
# example agent, `ocs-nats-fake-data-agent`. A site's own Python agents build
# FROM this image and add their code. Built from source and PyPI, for sites
# that can pull the base image and reach PyPI:
#   docker compose build pyfaker
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}
COPY python/ /src/ocs-nats/
RUN python3 -m pip install --no-cache-dir --root-user-action=ignore "/src/ocs-nats[twisted]" \
 && rm -rf /src/ocs-nats
# No bytecode written at run time: the container's file system is read-only.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
CMD ["ocs-nats-fake-data-agent", "--help"]
