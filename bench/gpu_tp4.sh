#!/usr/bin/env bash
# Issue #7's tp=4 figures for the Qwen3-32B shape on nvidia-h200-x4, in parts (run in the order
# given; each part's steps write JSON and append to OUT/all.log):
#   warm     compile flashinfer's JIT kernels once (norm, rotary, activation, decode, prefill for
#            head_dim 128) before anything is timed: run 7 lost its first four steps to it;
#   decode4  decode steps at tp=4, batch 1 and 8;
#   online   the server at tp=4 passing /health and serving 1 and 64 streaming clients, then the
#            same group as 2 node processes of 2 GPUs each; greedy output compared token for token
#            (both on NCCL: the one-shot all-reduce is single-node only);
#   offline4 offline throughput at tp=4 on nano-vllm's workload;
#   decode21 decode steps at tp=2 and tp=1, batch 1, for the speed-up.
# Usage (on the GPU machine, wheels in .whl/): bash bench/gpu_tp4.sh OUT PART...
# One call holds about warm + decode4 + online (or warm + offline4 + decode21) within 600 s.
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=$1; shift
export GPU_ONE_LOG=1 GPU_TAIL=12
gpu_setup "$out"
S=bench/shapes/qwen3-32b.json
ON="--shape $S --tp 4 --concurrency 1,64 --requests-per-client 1 --greedy-prompts 4"
for part in "$@"; do
    case $part in
    warm)
        gpu_step warm_kernels 200 python3 bench/check_kernels.py
        gpu_step warm_attention 200 python3 bench/offline.py --shape bench/shapes/qwen3-0.6b.json --device cuda --dtype bfloat16 \
            --attn fi --num-requests 4 --min-len 20 --max-len 40 ;;
    decode4) gpu_step decode_tp4 120 python3 bench/decode.py --shape $S --tp 4 --batches 1,8 --json "$out/decode_tp4.json" ;;
    online)
        gpu_step online_tp4 150 python3 bench/online.py $ON --server-args=--disable-custom-all-reduce --json "$out/online_tp4.json"
        gpu_step online_tp4_2nodes 150 python3 bench/online.py $ON --nnodes 2 --json "$out/online_tp4_2nodes.json"
        python3 -c "import json,sys; a,b=(json.load(open(f))['greedy'] for f in sys.argv[1:]); print('greedy outputs equal:', a==b, sum(x==y for x,y in zip(a,b)), 'of', len(a))" \
            "$out/online_tp4.json" "$out/online_tp4_2nodes.json" | tee -a "$out/all.log" ;;
    offline4) gpu_step offline_tp4 150 python3 bench/offline.py --shape $S --tp 4 $GPU_WORKLOAD --json "$out/offline_tp4.json" ;;
    decode21)
        gpu_step decode_tp2 90 python3 bench/decode.py --shape $S --tp 2 --batches 1 --json "$out/decode_tp2.json"
        gpu_step decode_tp1 90 python3 bench/decode.py --shape $S --tp 1 --batches 1 --json "$out/decode_tp1.json" ;;
    *) echo "unknown part $part"; exit 2 ;;
    esac
done
grep -h -A12 "^device:\|^online\|^engine" "$out/all.log" | grep -v "^--$"
