#!/usr/bin/env bash
# GPU run, part 1 (2 GPUs): graph-vs-eager checks, decode step at tp=1 and tp=2.
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_steps.sh OUT_DIR
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=${1:-out}
gpu_setup "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, flashinfer; print("torch", torch.__version__, "flashinfer", flashinfer.__version__)'; } | tee "$out/gpus.txt"
gpu_step check_kernels 260 python3 bench/check_kernels.py
gpu_step check_graph_tp1 200 python3 bench/check_cuda_graph.py --tp 1
gpu_step check_graph_tp2 120 python3 bench/check_cuda_graph.py --tp 2
gpu_step decode_tp1 150 python3 bench/decode.py --tp 1 --json "$out/decode_tp1.json"
gpu_step decode_tp2 150 python3 bench/decode.py --tp 2 --json "$out/decode_tp2.json"
