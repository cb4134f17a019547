#!/usr/bin/env bash
# GPU run 7 (nvidia-h200-x4): issue #7's tp=4 figures for the Qwen3-32B shape, most important first
# (the call may be cut short): decode step at tp=4; the server at tp=4 passing /health and serving
# 1 and 64 streaming clients, then the same group as 2 node processes of 2 GPUs each (greedy output
# compared token for token; both on NCCL, since the one-shot all-reduce is single-node only);
# offline throughput at tp=4; decode steps at tp=2 and tp=1 for the speed-up.
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_tp4.sh OUT_DIR
set -uo pipefail
out=${1:-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
log=$out/all.log
step() { local name=$1; shift; echo "== $name: $*" | tee -a "$log"; local t0=$SECONDS; timeout "$@" 2>&1 | grep -v "^\[W\|UserWarning\|_warn_once" >> "$log"; local rc=${PIPESTATUS[0]}; echo "== $name rc=$rc $((SECONDS - t0))s" | tee -a "$log"; }
S=bench/shapes/qwen3-32b.json
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
step decode_tp4 100 python3 bench/decode.py --shape $S --tp 4 --batches 1,8 --json "$out/decode_tp4.json"
ON="--shape $S --tp 4 --concurrency 1,64 --requests-per-client 1 --greedy-prompts 4"
step online_tp4 170 python3 bench/online.py $ON --server-args=--disable-custom-all-reduce --json "$out/online_tp4.json"
step online_tp4_2nodes 100 python3 bench/online.py $ON --nnodes 2 --json "$out/online_tp4_2nodes.json"
step offline_tp4 90 python3 bench/offline.py --shape $S --tp 4 --device cuda --dtype bfloat16 --attn fi --context-length 2100 \
    --num-requests 256 --min-len 100 --max-len 1024 --json "$out/offline_tp4.json"
step decode_tp2 60 python3 bench/decode.py --shape $S --tp 2 --batches 1 --json "$out/decode_tp2.json"
step decode_tp1 60 python3 bench/decode.py --shape $S --tp 1 --batches 1 --json "$out/decode_tp1.json"
grep -h -A12 "^device:\|^online\|^engine" "$log" | grep -v "^--$"
