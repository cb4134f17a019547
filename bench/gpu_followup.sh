#!/usr/bin/env bash
# GPU run, part 3 (2 GPUs): decode steps with the host/launch share, graph memory accounting, online at tp=2.
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_followup.sh OUT_DIR
set -uo pipefail
out=${1:-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
step() { local name=$1; shift; echo "== $name: $*"; local t0=$SECONDS; timeout "$@" > "$out/$name.log" 2>&1; local rc=$?; grep -h "captured" "$out/$name.log" | head -2; tail -n 16 "$out/$name.log"; echo "== $name rc=$rc $((SECONDS - t0))s"; }
step decode_tp1 200 python3 bench/decode.py --tp 1 --json "$out/decode_tp1.json"
step decode_tp2 120 python3 bench/decode.py --tp 2 --json "$out/decode_tp2.json"
step online_llama_tp2 200 python3 bench/online.py --shape bench/shapes/llama-3.1-8b.json --tp 2 --concurrency 1,16,64 --json "$out/online_llama_tp2.json" --log "$out/online_server_tp2.log"
grep -h "captured" "$out/online_server_tp2.log"
