#!/usr/bin/env bash
# GPU run (one H200) for the engine work: tpserve beside Mini-SGLang first (the claim), then the
# checks and the other benchmarks while time is left.
#   bash bench/gpu_engine.sh OUT_DIR DEADLINE_S [STEP...]
# Needs .whl/ (flashinfer, tvm-ffi, pyzmq) and .peer/ (a copy of ../shared/peers, with jit_*.tgz
# from an earlier call when there are some) carried. STEP (default: all, in this order):
#   peer       .peer/run.sh q:tpserve q:minisgl l:tpserve l:minisgl
#   kernels    bench/check_kernels.py (fused kernels vs the torch reference ops, whole-model logits)
#   graphs     bench/check_cuda_graph.py (graph vs eager decode)
#   overlap    bench/check_overlap.py (overlap on and off, same tokens)
#   memory     bench/check_memory.py (largest steps at the default memory fraction)
#   decode     bench/decode.py at tp=1, Llama-3.1-8B shape (TPOT against the HBM roofline), with
#              kernel profiles of the batch-1 and batch-256 graph steps
#   decodeq    the same at the Qwen3-0.6B shape, batches 1 and 256
#   prefill    bench/prefill.py: one 8192-token prompt, Llama-3.1-8B shape (MFU), with its profile
#   prefix     bench/prefix.py, Llama-3.1-8B shape, radix cache on and off
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=$1; deadline=$2; shift 2
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(peer graphs overlap memory decode decodeq prefill prefix)
gpu_setup "$out" > /dev/null
export TVM_FFI_CUDA_ARCH_LIST=9.0 TOKENIZERS_PARALLELISM=false
gpu_restore_jit .peer

# run NAME LIMIT CMD...: skipped when less than LIMIT seconds are left before the deadline.
run() {
    local name=$1 limit=$2; shift 2
    if [ $((deadline - SECONDS)) -lt "$limit" ]; then echo "== $name SKIPPED: $((deadline - SECONDS))s left"; return; fi
    gpu_step "$name" "$limit" "$@"
}

for step in "${steps[@]}"; do
    case $step in
    peer) bash .peer/run.sh "$out/peer" $((deadline - SECONDS - 10)) q:tpserve q:minisgl l:tpserve l:minisgl 2>&1 |
        grep "RESULT\|leader:\|engine ready\|== " | cut -c1-400 ;;
    kernels) GPU_TAIL=12 run check_kernels 90 python3 bench/check_kernels.py ;;
    graphs) GPU_TAIL=10 run check_cuda_graph 90 python3 bench/check_cuda_graph.py ;;
    overlap) GPU_TAIL=4 run check_overlap 120 python3 bench/check_overlap.py ;;
    memory) GPU_TAIL=4 run check_memory 150 python3 bench/check_memory.py ;;
    decode) GPU_TAIL=60 run decode 150 python3 bench/decode.py --tp 1 --batches 1,8,64,256 \
        --profile graph:1,graph:256 --json "$out/decode.json" ;;
    decodeq) GPU_TAIL=30 run decodeq 120 python3 bench/decode.py --tp 1 --shape bench/shapes/qwen3-0.6b.json \
        --batches 1,256 --profile graph:256 --json "$out/decode_qwen.json" ;;
    prefill) GPU_TAIL=20 run prefill 120 python3 bench/prefill.py --profile --json "$out/prefill.json" ;;
    prefix) GPU_TAIL=6 run prefix 150 python3 bench/prefix.py --device cuda --dtype bfloat16 --attn fi \
        --shape bench/shapes/llama-3.1-8b.json --prompts 32 --questions 8 --system-len 2048 \
        --question-len 32 --output-len 32 --conversations 32 --turns 6 ;;
    *) echo "unknown step $step" ;;
    esac
done
gpu_save_jit "$out"
