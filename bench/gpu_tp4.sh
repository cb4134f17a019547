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
out=$1; shift; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
log=$out/all.log
step() { local name=$1; shift; echo "== $name: $*" | tee -a "$log"; local t0=$SECONDS; timeout "$@" 2>&1 | grep -v "^\[W\|UserWarning\|_warn_once" >> "$log"; local rc=${PIPESTATUS[0]}; echo "== $name rc=$rc $((SECONDS - t0))s" | tee -a "$log"; }
S=bench/shapes/qwen3-32b.json
ON="--shape $S --tp 4 --concurrency 1,64 --requests-per-client 1 --greedy-prompts 4"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
for part in "$@"; do
    case $part in
    warm)
        step warm_kernels 200 python3 bench/check_kernels.py
        step warm_attention 200 python3 bench/offline.py --shape bench/shapes/qwen3-0.6b.json --device cuda --dtype bfloat16 \
            --attn fi --num-requests 4 --min-len 20 --max-len 40 ;;
    decode4) step decode_tp4 120 python3 bench/decode.py --shape $S --tp 4 --batches 1,8 --json "$out/decode_tp4.json" ;;
    online)
        step online_tp4 150 python3 bench/online.py $ON --server-args=--disable-custom-all-reduce --json "$out/online_tp4.json"
        step online_tp4_2nodes 150 python3 bench/online.py $ON --nnodes 2 --json "$out/online_tp4_2nodes.json"
        python3 -c "import json,sys; a,b=(json.load(open(f))['greedy'] for f in sys.argv[1:]); print('greedy outputs equal:', a==b, sum(x==y for x,y in zip(a,b)), 'of', len(a))" \
            "$out/online_tp4.json" "$out/online_tp4_2nodes.json" | tee -a "$log" ;;
    offline4) step offline_tp4 150 python3 bench/offline.py --shape $S --tp 4 --device cuda --dtype bfloat16 --attn fi \
            --context-length 2100 --num-requests 256 --min-len 100 --max-len 1024 --json "$out/offline_tp4.json" ;;
    decode21)
        step decode_tp2 90 python3 bench/decode.py --shape $S --tp 2 --batches 1 --json "$out/decode_tp2.json"
        step decode_tp1 90 python3 bench/decode.py --shape $S --tp 1 --batches 1 --json "$out/decode_tp1.json" ;;
    *) echo "unknown part $part"; exit 2 ;;
    esac
done
grep -h -A12 "^device:\|^online\|^engine" "$log" | grep -v "^--$"
