#!/usr/bin/env bash
# GPU run 5 (1 GPU is enough): where a tp=1 decode step's time goes (kernel profile of the graph
# and eager steps, Llama-3.1-8B shape), then the measurement issue #5 still owed: transformers
# generate beside tpserve on the Qwen3-0.6B shape (in run 4 it did not finish within 240 s).
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_next.sh OUT_DIR
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=${1:-out}
gpu_setup "$out"
gpu_step decode_profile_tp1 150 python3 bench/decode.py --tp 1 --batches 1,8 --profile graph:1,eager:1,graph-unfused:1 --json "$out/decode_profile_tp1.json"
gpu_step offline_qwen3_tp1_hf 400 python3 bench/offline.py --shape bench/shapes/qwen3-0.6b.json --tp 1 $GPU_WORKLOAD \
    --transformers 16 --json "$out/offline_qwen3_tp1_hf.json"
