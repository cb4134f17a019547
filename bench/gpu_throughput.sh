#!/usr/bin/env bash
# GPU run, part 2 (2 GPUs): offline throughput (tp=1 with transformers beside it, tp=2) and online latency.
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_throughput.sh OUT_DIR
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=${1:-out}
gpu_setup "$out"
L=bench/shapes/llama-3.1-8b.json Q=bench/shapes/qwen3-0.6b.json
gpu_step offline_llama_tp1 200 python3 bench/offline.py --shape $L --tp 1 $GPU_WORKLOAD --transformers 16 --json "$out/offline_llama_tp1.json"
gpu_step offline_llama_tp2 120 python3 bench/offline.py --shape $L --tp 2 $GPU_WORKLOAD --json "$out/offline_llama_tp2.json"
gpu_step offline_qwen3_tp1 100 python3 bench/offline.py --shape $Q --tp 1 $GPU_WORKLOAD --json "$out/offline_qwen3_tp1.json"
gpu_step online_llama_tp1 120 python3 bench/online.py --shape $L --tp 1 --concurrency 1,16,64 --json "$out/online_llama_tp1.json" --log "$out/online_server_tp1.txt"
