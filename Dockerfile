# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target server   -t tpserve:0.1.0 .            (CUDA, torch, flashinfer, tpserve)
#   docker build --target operator -t tpserve-operator:0.1.0 .   (slim Python, kopf, tpserve-operator)

ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------
# server: the inference server on a CUDA devel base (nvcc stays available for any kernel that
# was not compiled ahead of time).
FROM ${CUDA_DEVEL_IMAGE} AS server
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG FLASHINFER_VERSION=0.6.8
# flashinfer-jit-cache is not on PyPI: flashinfer publishes it per CUDA version, matching TORCH_INDEX's.
ARG FLASHINFER_JIT_CACHE_INDEX=https://flashinfer.ai/whl/cu128
# Hopper (H100/H200): the kernels are compiled for this architecture while the image is built.
ARG CUDA_ARCH_LIST=9.0a
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    FLASHINFER_CUDA_ARCH_LIST=${CUDA_ARCH_LIST} \
    TORCH_CUDA_ARCH_LIST=9.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The base image pins the distribution release; its security updates are wanted, so packages float.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev ninja-build git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && pip install "flashinfer-python==${FLASHINFER_VERSION}" \
    # flashinfer-jit-cache holds flashinfer's kernels compiled ahead of time, so server pods do not
    # JIT-compile at start (on a fresh H100 the sm90 prefill kernels alone are ~10 nvcc jobs of 70-90 s each).
    && pip install "flashinfer-jit-cache==${FLASHINFER_VERSION}" --index-url "${FLASHINFER_JIT_CACHE_INDEX}"

WORKDIR /opt/tpserve
COPY server/ ./server/
RUN pip install ./server

RUN groupadd --gid 10001 tpserve \
    && useradd --uid 10001 --gid tpserve --create-home --home-dir /home/tpserve tpserve
USER 10001:10001
ENV HOME=/home/tpserve
EXPOSE 30000 29500
ENTRYPOINT ["python3", "-m", "tpserve"]

# ---------------------------------------------------------------------------------------------
# operator: kopf and the operator package only (no torch).
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/tpserve-operator
COPY operator/ ./operator/
RUN pip install ./operator \
    && groupadd --gid 10001 tpserve \
    && useradd --uid 10001 --gid tpserve --no-create-home --home-dir /nonexistent tpserve
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python3", "-m", "tpserve_operator"]
