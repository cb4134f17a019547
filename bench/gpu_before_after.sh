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
source "$(dirname "$0")/gpu_lib.sh"
baseline=$(realpath "$1"); out=$2; shift 2
gpu_setup "$out"
before="env PYTHONPATH=/tmp/site:$baseline"  # a command prefix: the baseline's server/ instead of this one
decode() {  # two rounds, alternating: the host part of a step varies from process to process
    local tp=$1
    for round in 1 2; do
        gpu_step decode_tp${tp}_before_$round 90 $before python3 bench/decode.py --tp $tp --batches 1,8 --json "$out/decode_tp${tp}_before_$round.json"
        gpu_step decode_tp${tp}_after_$round 90 python3 bench/decode.py --tp $tp --batches 1,8 --profile graph:1 --json "$out/decode_tp${tp}_after_$round.json"
    done
}
for part in "$@"; do
    case $part in
    checks)
        gpu_step check_kernels 150 python3 bench/check_kernels.py
        gpu_step check_attention 120 python3 bench/check_attention.py
        gpu_step check_graph_tp1 120 python3 bench/check_cuda_graph.py --tp 1 ;;
    checks2) gpu_step check_graph_tp2 120 python3 bench/check_cuda_graph.py --tp 2 ;;
    decode1) decode 1 ;;
    decode2) decode 2 ;;
    offline)
        for shape in qwen3-0.6b llama-3.1-8b; do
            O="--shape bench/shapes/$shape.json --tp 1 $GPU_WORKLOAD"
            gpu_step offline_${shape}_before 120 $before python3 bench/offline.py $O --json "$out/offline_${shape}_before.json"
            gpu_step offline_${shape}_after 120 python3 bench/offline.py $O --json "$out/offline_${shape}_after.json"
        done ;;
    *) echo "unknown part $part"; exit 2 ;;
    esac
done
