#!/usr/bin/env bash
# GPU run (one H200) for the engine work: overlap exactness, then tpserve beside Mini-SGLang.
#   bash bench/gpu_engine.sh OUT_DIR DEADLINE_S [PEER_PART...]
# Needs .whl/ (flashinfer, tvm-ffi, pyzmq) and .peer/ (a copy of ../shared/peers) carried.
# PEER_PART as in .peer/run.sh (default: q:tpserve q:minisgl l:tpserve l:minisgl); set
# GPU_CHECKS=0 to skip the checks, GPU_PREFIX=1 to add bench/prefix.py on the GPU.
set -uo pipefail
source "$(dirname "$0")/gpu_lib.sh"
out=$1; deadline=$2; shift 2
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(q:tpserve q:minisgl l:tpserve l:minisgl)
gpu_setup "$out"
export TVM_FFI_CUDA_ARCH_LIST=9.0 TOKENIZERS_PARALLELISM=false
[ -f .peer/jit.tgz ] && tar xzf .peer/jit.tgz -C "$HOME" && echo "restored JIT caches"
if [ "${GPU_CHECKS:-1}" = 1 ]; then
    gpu_step check_cuda_graph 150 python3 bench/check_cuda_graph.py
    gpu_step check_overlap 150 python3 bench/check_overlap.py
fi
if [ "${GPU_PREFIX:-0}" = 1 ]; then
    gpu_step prefix 200 python3 bench/prefix.py --device cuda --dtype bfloat16 --attn fi \
        --shape bench/shapes/llama-3.1-8b.json --prompts 32 --questions 16 --system-len 2048 \
        --question-len 32 --output-len 32 --conversations 32 --turns 6
fi
left=$((deadline - SECONDS - 15))
bash .peer/run.sh "$out/peer" "$left" "${parts[@]}"
