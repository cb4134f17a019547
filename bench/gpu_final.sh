#!/usr/bin/env bash
# GPU run, part 4 (2 GPUs): Qwen3-0.6B offline beside transformers (tp=1) and at tp=2; decode steps
# at tp=1 and tp=2 with step plans over shared memory. Usage: bash bench/gpu_final.sh OUT_DIR
set -uo pipefail
out=${1:-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
step() { local name=$1; shift; echo "== $name: $*"; local t0=$SECONDS; timeout "$@" > "$out/$name.log" 2>&1; local rc=$?; grep -h "captured" "$out/$name.log" | head -1; tail -n 9 "$out/$name.log"; echo "== $name rc=$rc $((SECONDS - t0))s"; }
O="--device cuda --dtype bfloat16 --attn fi --context-length 2100 --num-requests 256 --min-len 100 --max-len 1024"
Q=bench/shapes/qwen3-0.6b.json
step offline_qwen3_tp1 240 python3 bench/offline.py --shape $Q --tp 1 $O --transformers 16 --json "$out/offline_qwen3_tp1.json"
step decode_tp1 60 python3 bench/decode.py --tp 1 --batches 1,8 --json "$out/decode_tp1.json"
step decode_tp2 60 python3 bench/decode.py --tp 2 --batches 1,8 --json "$out/decode_tp2.json"
step offline_qwen3_tp2 80 python3 bench/offline.py --shape $Q --tp 2 $O --json "$out/offline_qwen3_tp2.json"
