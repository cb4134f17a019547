#!/usr/bin/env bash
# GPU run still owed by issue #5 (1 GPU is enough): re-check the GPU-only paths changed after the
# last device run, then transformers generate beside tpserve on the Qwen3-0.6B shape (in run 4 it
# did not finish within 240 s; here it gets the rest of the call).
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_next.sh OUT_DIR
set -uo pipefail
out=${1:-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
timeout 150 python3 bench/check_kernels.py 2>&1 | tee "$out/check_kernels.log" | tail -3
timeout 120 python3 bench/check_cuda_graph.py --tp 1 2>&1 | tee "$out/check_graph_tp1.log" | tail -3
timeout 300 python3 bench/offline.py --shape bench/shapes/qwen3-0.6b.json --tp 1 --device cuda --dtype bfloat16 \
    --attn fi --context-length 2100 --num-requests 256 --min-len 100 --max-len 1024 --transformers 16 \
    --json "$out/offline_qwen3_tp1_hf.json" 2>&1 | tee "$out/offline_qwen3_tp1_hf.log" | tail -8
