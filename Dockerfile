# syntax=docker/dockerfile:1
# sonolab's image: the project installed from its wheel (not editable), headless, as an unprivileged
# user, wandb offline unless told otherwise. CPU torch by default; for NVIDIA GPUs build with the CUDA
# build of torch (its wheels carry the CUDA libraries: the host needs only the driver and the NVIDIA
# Container Toolkit):
#
#   docker build -t sonolab:cpu .
#   docker build -t sonolab:cu128 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm -v "$PWD/logs:/home/sonolab/logs" sonolab:cpu sonolab-train task=us_nav_state
#   docker run --rm --gpus all -v "$PWD/logs:/home/sonolab/logs" sonolab:cu128 sonolab-train device=cuda
#
# Runs write to /home/sonolab/logs (log_root=logs), prepared patients to /home/sonolab/.cache/sonolab
# (mount it to keep them between runs). apptainer.def turns the image into a .sif for clusters.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Stage 1: the wheel, built from the sources the wheel needs (.dockerignore keeps the rest out).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sim sim
COPY tasks tasks
COPY policies policies
COPY conf conf
COPY assets assets
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: torch first (from TORCH_INDEX, so that "torch>=2.4" does not pull another build), then
# sonolab from its wheel with its dependencies and SONOLAB_EXTRAS; no sources in this stage.
FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG SONOLAB_EXTRAS=wandb,cluster
ENV VIRTUAL_ENV=/opt/sonolab \
    PATH=/opt/sonolab/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WANDB_MODE=offline
RUN python -m venv /opt/sonolab \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /wheels
# DL3013 asks for pinned versions: this is the wheel file just built (its version is the project's); the
# dependencies' ranges are pyproject.toml's.
# hadolint ignore=DL3013
RUN set -- /wheels/sonolab-*.whl \
    && pip install --no-cache-dir "$1[${SONOLAB_EXTRAS}]" \
    && rm -rf /wheels
RUN useradd --create-home --uid 1000 --user-group sonolab
# Numeric, so that runtimes can check it is not root (Kubernetes' runAsNonRoot): the user sonolab.
USER 1000:1000
WORKDIR /home/sonolab
CMD ["sonolab-train"]
