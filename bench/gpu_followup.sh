#!/usr/bin/env bash
# GPU run, part 3 (2 GPUs): decode steps with the host/launch share, graph memory accounting, online at tp=2.
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_followup.sh OUT_DIR
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=${1:-out}
gpu_setup "$out"
gpu_step decode_tp1 200 python3 bench/decode.py --tp 1 --json "$out/decode_tp1.json"
gpu_step decode_tp2 120 python3 bench/decode.py --tp 2 --json "$out/decode_tp2.json"
gpu_step online_llama_tp2 200 python3 bench/online.py --shape bench/shapes/llama-3.1-8b.json --tp 2 --concurrency 1,16,64 --json "$out/online_llama_tp2.json" --log "$out/online_server_tp2.log"
grep -h "captured" "$out/online_server_tp2.log"
