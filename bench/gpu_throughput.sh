#!/usr/bin/env bash
# GPU run, part 2 (2 GPUs): offline throughput (tp=1 with transformers beside it, tp=2) and online latency.
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_throughput.sh OUT_DIR
set -uo pipefail
out=${1:-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
step() { local name=$1; shift; echo "== $name: $*"; local t0=$SECONDS; timeout "$@" > "$out/$name.log" 2>&1; local rc=$?; tail -n 8 "$out/$name.log"; echo "== $name rc=$rc $((SECONDS - t0))s"; }
O="--device cuda --dtype bfloat16 --attn fi --context-length 2100 --num-requests 256 --min-len 100 --max-len 1024"
L=bench/shapes/llama-3.1-8b.json Q=bench/shapes/qwen3-0.6b.json
step offline_llama_tp1 200 python3 bench/offline.py --shape $L --tp 1 $O --transformers 16 --json "$out/offline_llama_tp1.json"
step offline_llama_tp2 120 python3 bench/offline.py --shape $L --tp 2 $O --json "$out/offline_llama_tp2.json"
step offline_qwen3_tp1 100 python3 bench/offline.py --shape $Q --tp 1 $O --json "$out/offline_qwen3_tp1.json"
step online_llama_tp1 120 python3 bench/online.py --shape $L --tp 1 --concurrency 1,16,64 --json "$out/online_llama_tp1.json" --log "$out/online_server_tp1.txt"
