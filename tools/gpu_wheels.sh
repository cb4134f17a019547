#!/usr/bin/env bash
# The wheels the GPU machine's image lacks, downloaded into .whl/ (carried with `carry: [".whl"]`;
# bench/gpu_lib.sh installs them into /tmp/site there). Python 3.12, manylinux x86_64, no deps:
# the image has torch 2.11, transformers 5.17, tokenizers, safetensors, huggingface_hub and numpy.
#   flashinfer + tvm-ffi      attention, sampling and norm kernels
#   the HTTP stack            the server (bench/online.py), and Mini-SGLang's server beside it
#                             (fastapi imports opentelemetry-api; httptools: uvicorn's C parser)
#   pyzmq, prompt_toolkit     Mini-SGLang's processes talk over ZeroMQ; its API server imports the shell
#   prometheus-client, ...    tpserve's own dependencies (pyproject) the image lacks
#   httpx                     bench/online.py's client
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    flashinfer-python==0.6.8 'apache-tvm-ffi>=0.1.6,<0.2,!=0.1.8,!=0.1.8.post0' \
    pyzmq==27.3.0 prompt_toolkit==3.0.52 wcwidth==0.2.14 \
    fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 h11==0.16.0 click==8.5.1 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 annotated-doc==0.0.7 typing-inspection==0.4.5 \
    typing_extensions==4.16.0 prometheus_client==0.26.0 python-json-logger==4.2.0 xgrammar==0.2.9 gguf==0.19.0 \
    opentelemetry-api==1.45.2 httptools==0.9.0 httpx==0.29.0 httpcore==1.0.9 anyio==4.16.0 sniffio==1.3.1 idna==3.20 certifi==2026.10.19.post1
du -sh .whl
