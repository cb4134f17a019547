#!/usr/bin/env bash
# The current server beside an earlier one (BASELINE: a copy of its server/ directory, e.g.
# `git archive <commit> server | tar -x -C .baseline`), side by side in one GPU call.
# Parts, run in the order given:
#   checks    GPU checks of the current server: fused kernels and K/V write, flashinfer against
#             the torch backend, graph replay against eager decode at tp=1;
#   checks2   graph replay against eager decode at tp=2 (2 GPUs);
#   decode1   decode steps at tp=1 for both (Llama-3.1-8B shape), two alternating rounds, with a
#             kernel profile of the current one;
#   decode2   the same at tp=2 (2 GPUs);
#   offline   the offline workload at tp=1 for both (Qwen3-0.6B and Llama-3.1-8B shapes).
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_before_after.sh BASELINE OUT PART...
set -uo pipefail
baseline=$(realpath "$1"); out=$2; shift 2; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1
current() { PYTHONPATH=/tmp/site:$PWD/server "$@"; }
before() { PYTHONPATH=/tmp/site:$baseline "$@"; }
step() { local name=$1 who=$2; shift 2; echo "== $name: $*"; local t0=$SECONDS; $who timeout "$@" > "$out/$name.log" 2>&1; local rc=$?; grep -v "^\[W\|INFO\|UserWarning\|_warn_once" "$out/$name.log" | tail -n 32; echo "== $name rc=$rc $((SECONDS - t0))s"; }
decode() {  # two rounds, alternating: the host part of a step varies from process to process
    local tp=$1
    for round in 1 2; do
        step decode_tp${tp}_before_$round before 90 python3 bench/decode.py --tp $tp --batches 1,8 --json "$out/decode_tp${tp}_before_$round.json"
        step decode_tp${tp}_after_$round current 90 python3 bench/decode.py --tp $tp --batches 1,8 --profile graph:1 --json "$out/decode_tp${tp}_after_$round.json"
    done
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for part in "$@"; do
    case $part in
    checks)
        step check_kernels current 150 python3 bench/check_kernels.py
        step check_attention current 120 python3 bench/check_attention.py
        step check_graph_tp1 current 120 python3 bench/check_cuda_graph.py --tp 1 ;;
    checks2) step check_graph_tp2 current 120 python3 bench/check_cuda_graph.py --tp 2 ;;
    decode1) decode 1 ;;
    decode2) decode 2 ;;
    offline)
        O="--tp 1 --device cuda --dtype bfloat16 --attn fi --context-length 2100 --num-requests 256 --min-len 100 --max-len 1024"
        for shape in qwen3-0.6b llama-3.1-8b; do
            step offline_${shape}_before before 120 python3 bench/offline.py --shape bench/shapes/$shape.json $O --json "$out/offline_${shape}_before.json"
            step offline_${shape}_after current 120 python3 bench/offline.py --shape bench/shapes/$shape.json $O --json "$out/offline_${shape}_after.json"
        done ;;
    *) echo "unknown part $part"; exit 2 ;;
    esac
done
