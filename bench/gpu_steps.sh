#!/usr/bin/env bash
# GPU run, part 1 (2 GPUs): graph-vs-eager checks, all-reduce latency, decode step at tp=1 and tp=2.
# Usage (on the GPU machine, flashinfer wheels in .whl/): bash bench/gpu_steps.sh OUT_DIR
set -uo pipefail
out=${1:-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"
python3 -c 'import torch, flashinfer; print("torch", torch.__version__, "flashinfer", flashinfer.__version__)' | tee -a "$out/gpus.txt"
step() { local name=$1; shift; echo "== $name: $*"; local t0=$SECONDS; timeout "$@" > "$out/$name.log" 2>&1; local rc=$?; tail -n 14 "$out/$name.log"; echo "== $name rc=$rc $((SECONDS - t0))s"; }
step check_kernels 260 python3 bench/check_kernels.py
step check_graph_tp1 200 python3 bench/check_cuda_graph.py --tp 1
step check_graph_tp2 120 python3 bench/check_cuda_graph.py --tp 2

step decode_tp1 150 python3 bench/decode.py --tp 1 --json "$out/decode_tp1.json"
step decode_tp2 150 python3 bench/decode.py --tp 2 --json "$out/decode_tp2.json"
