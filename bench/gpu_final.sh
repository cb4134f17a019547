#!/usr/bin/env bash
# GPU run, part 4 (2 GPUs): Qwen3-0.6B offline beside transformers (tp=1) and at tp=2; decode steps
# at tp=1 and tp=2 with step plans over shared memory. Usage: bash bench/gpu_final.sh OUT_DIR
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=${1:-out}
gpu_setup "$out"
Q=bench/shapes/qwen3-0.6b.json
gpu_step offline_qwen3_tp1 240 python3 bench/offline.py --shape $Q --tp 1 $GPU_WORKLOAD --transformers 16 --json "$out/offline_qwen3_tp1.json"
gpu_step decode_tp1 60 python3 bench/decode.py --tp 1 --batches 1,8 --json "$out/decode_tp1.json"
gpu_step decode_tp2 60 python3 bench/decode.py --tp 2 --batches 1,8 --json "$out/decode_tp2.json"
gpu_step offline_qwen3_tp2 80 python3 bench/offline.py --shape $Q --tp 2 $GPU_WORKLOAD --json "$out/offline_qwen3_tp2.json"
