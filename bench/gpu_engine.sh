#!/usr/bin/env bash
# GPU run (one H200) for the engine work: tpserve beside Mini-SGLang first (the claim), then the
# checks and the other benchmarks while time is left.
#   bash bench/gpu_engine.sh OUT_DIR DEADLINE_S [STEP...]
# Needs .whl/ (flashinfer, tvm-ffi, pyzmq) and .peer/ (a copy of ../shared/peers, with jit_*.tgz
# from an earlier call when there are some) carried. STEP (default: all, in this order):
#   jitwarm    one short bench/prefill.py run with a long limit, first in a call on a fresh machine:
#              flashinfer's JIT builds every attention kernel there once (the sm90 prefill kernels
#              alone are ~10 objects of 70-90 s each), so later steps' limits time the steps, not the
#              compiler (a step cut off mid-build loses its compile and the next starts it again)
#   peer       .peer/run.sh q:tpserve q:minisgl l:tpserve l:minisgl
#   peerq, peerl   only the Qwen3-0.6B parts, only the Llama-3.1-8B parts (offline and batch-1 decode)
#   peerlskinny    tpserve's Llama-3.1-8B part again with TPSERVE_SKINNY_GEMM=1 (the Triton kernel at batch 1-4)
#   peerlcublas    the same with TPSERVE_SKINNY_GEMM=0 (cuBLAS for every projection, the default)
#   peerlauto      the same with TPSERVE_SKINNY_GEMM=auto (both timed per weight shape at start-up,
#                  the faster kept at batch 1)
#   kernels    bench/check_kernels.py (fused kernels vs the torch reference ops, whole-model logits)
#   graphs     bench/check_cuda_graph.py (graph vs eager decode, and prefill from the prefill graphs)
#   overlap    bench/check_overlap.py (overlap on and off, same tokens)
#   memory     bench/check_memory.py (largest steps at the default memory fraction)
#   decode     bench/decode.py at tp=1, Llama-3.1-8B shape (TPOT against the HBM roofline), with
#              kernel profiles of the batch-1 and batch-256 graph steps
#   decodeq    the same at the Qwen3-0.6B shape, batches 1 and 256
#   prefill    bench/prefill.py: one 8192-token prompt, Llama-3.1-8B shape (MFU), with its profile
#   prefix     bench/prefix.py, Llama-3.1-8B shape, radix cache on and off
#   online     bench/online.py against Mini-SGLang's server and then tpserve's, Llama-3.1-8B shape:
#              the same client, prompts and settings, chat requests (its server takes no token ids)
#   onlineprefix   the same with shared prefixes: 4 system prompts of 448 tokens + 64 own tokens each
#   onlinestreak   tpserve's server alone as in `online`, with --max-prefill-streak 4
#   onlinestreak2  the same with --max-prefill-streak 2 (bench/schedule_sim.py's candidate)
#   decodeab   bench/decode.py's batch-1 step (with its kernel profile) with TPSERVE_SKINNY_GEMM=0 and
#              =auto, alternating, two rounds (one log: OUT/all.log)
#   ggufstash  keep the carried .gguf/ part (tools/gguf_parts.sh N) on the machine for `gguf`
#   gguf       join the demo GGUF's three parts (carried over consecutive calls to one warm machine),
#              check its sha256, then bench/check_gguf.py in bf16 and float16 (flashinfer) and float32
#              (torch attention): tpserve's greedy answers against transformers' (sdpa and eager)
#   gemv       bench/gemv.py: the batch-1 and batch-4 projections by cuBLAS and by the skinny kernel
#   prefillshort   bench/prefill.py --profile for one 16- and one 1024-token prompt: the eager prefill
#              step's wall time against its kernels' busy time (is a short prefill launch-bound?)
#   ttft       .peer/peer_bench.py's batch-1 latency for both engines at 16- and 1024-token prompts
#              (what the first token costs beyond the prefill itself), then tpserve's 16-token run
#              again with the leader loop under cProfile (OUT/ttft_host.prof.txt); one log: OUT/all.log
#   prefillgraph   bench/check_cuda_graph.py, then bench/prefill.py --graph (eager against the prefill
#              CUDA graph, alternating) at 16 and 512 tokens, then peer_bench's batch-1 latency at
#              16- and 256-token prompts for tpserve with --cuda-graph-max-prefill-tokens 512, tpserve
#              without, and Mini-SGLang (OUT/ttft_graph.jsonl; one log: OUT/all.log)
#   ropestore  bench/check_kernels.py (the fused rotary + K/V store kernel among the others), then
#              bench/decode.py's batch-1 and batch-64 steps with TPSERVE_ROPE_STORE=0 and =1,
#              alternating, two rounds, with the batch-1 graph step's kernel profile (OUT/all.log)
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

L=bench/shapes/llama-3.1-8b.json
ONLINE="--shape $L --api chat --concurrency 1,16,64 --input-len 512 --output-len 256 --requests-per-client 2"

# Mini-SGLang's own server on the same shape directory (its dummy weights, flashinfer, page size 16,
# graphs to batch 256), measured by bench/online.py; then tpserve's server by the same command.
#   online_against_peer NAME [BENCH FLAG...]   results in OUT/NAME_{minisgl,tpserve}.json
online_against_peer() {
    local name=$1; shift
    python3 bench/online.py --shape $L --write-model-dir /tmp/llama_words || return
    local port=31919
    PYTHONPATH=/tmp/site:$PWD/.peer/mini-sglang/python setsid python3 -m minisgl --model /tmp/llama_words \
        --dummy-weight --port $port --attn fi --page-size 16 --max-running-requests 256 --cuda-graph-max-bs 256 \
        --memory-ratio 0.9 --max-prefill-length 8192 > "$out/${name}_minisgl_server.log" 2>&1 &
    local peer=$! waited=0
    until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v1/models', timeout=2)" 2>/dev/null; do
        if ! kill -0 $peer 2>/dev/null || [ $waited -ge 200 ]; then
            echo "== ${name}_minisgl: its server is not serving after ${waited}s"; tail -n 20 "$out/${name}_minisgl_server.log"
            kill -9 -- -$peer 2>/dev/null; return
        fi
        sleep 1; waited=$((waited + 1))
    done
    echo "== ${name}_minisgl: its server answers after ${waited}s"
    GPU_TAIL=8 run "${name}_minisgl" 100 python3 bench/online.py $ONLINE "$@" --url http://127.0.0.1:$port \
        --label mini-sglang --startup-timeout 200 --json "$out/${name}_minisgl.json"
    kill -- -$peer 2>/dev/null; sleep 5; kill -9 -- -$peer 2>/dev/null; wait $peer 2>/dev/null
    GPU_TAIL=8 run "${name}_tpserve" 100 python3 bench/online.py $ONLINE "$@" --label tpserve --startup-timeout 200 \
        --server-args "--page-size 16 --attn fi --max-prefill-length 8192" \
        --log "$out/${name}_tpserve_server.log" --json "$out/${name}_tpserve.json"
}

# stash_gguf_part: the carried .gguf/ part (tools/gguf_parts.sh N) into /tmp/gguf, which outlives the call
# while the machine stays warm.
stash_gguf_part() { mkdir -p /tmp/gguf && cp .gguf/* /tmp/gguf/ 2> /dev/null; }

for step in "${steps[@]}"; do
    case $step in
    peer) bash .peer/run.sh "$out/peer" $((deadline - SECONDS - 10)) q:tpserve q:minisgl l:tpserve l:minisgl 2>&1 |
        grep "RESULT\|leader:\|engine ready\|batch-1 projection\|== " | cut -c1-400 ;;
    peerq | peerl) shape=${step#peer}
        bash .peer/run.sh "$out/peer" $((deadline - SECONDS - 10)) "$shape:tpserve" "$shape:minisgl" 2>&1 |
        grep "RESULT\|leader:\|engine ready\|batch-1 projection\|== " | cut -c1-400 ;;
    peerlskinny | peerlcublas | peerlauto) mode=$(case $step in peerlskinny) echo 1 ;; peerlauto) echo auto ;; *) echo 0 ;; esac)
        TPSERVE_SKINNY_GEMM=$mode bash .peer/run.sh "$out/$step" $((deadline - SECONDS - 10)) l:tpserve 2>&1 |
        grep "RESULT\|leader:\|engine ready\|== " | cut -c1-400 ;;
    jitwarm) GPU_TAIL=6 run jit_warmup 330 python3 bench/prefill.py --tokens 16 --iters 2 ;;
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
    online) online_against_peer online ;;
    onlineprefix) online_against_peer online_prefix --shared-prefix 448 --prefix-groups 4 ;;
    onlinestreak | onlinestreak2) streak=$([ "$step" = onlinestreak2 ] && echo 2 || echo 4)
        GPU_TAIL=8 run "online_streak${streak}_tpserve" 100 python3 bench/online.py $ONLINE --label "tpserve-streak$streak" \
        --startup-timeout 200 --server-args "--page-size 16 --attn fi --max-prefill-length 8192 --max-prefill-streak $streak" \
        --log "$out/online_streak${streak}_tpserve_server.log" --json "$out/online_streak${streak}_tpserve.json" ;;
    decodeab) for round in 1 2; do for mode in 0 auto; do
        TPSERVE_SKINNY_GEMM=$mode GPU_ONE_LOG=1 GPU_TAIL=0 run "decode_skinny_${mode}_$round" 90 python3 bench/decode.py \
            --tp 1 --batches 1 --iters 100 --profile graph:1
        grep -h "batch-1 projection\|^graph \|^idle\|^step\|^gemm\|^other" "/tmp/gpu_step_decode_skinny_${mode}_$round.log" | cut -c1-160
    done; done ;;
    prefillshort) for tokens in 16 1024; do
        GPU_TAIL=24 run "prefill_$tokens" 120 python3 bench/prefill.py --tokens $tokens --profile \
            --json "$out/prefill_$tokens.json"
    done ;;
    ttft) for variant in tpserve:16:200 minisgl:16:200 tpserve:1024:100 minisgl:1024:100 profile:16:100; do
        IFS=: read -r engine prompt limit <<< "$variant"
        variant=$engine:$prompt  # an engine's first start may spend ~90 s in flashinfer's JIT
        path=/tmp/site:$PWD/server profile=""
        [ "$engine" = minisgl ] && path=/tmp/site:$PWD/.peer/mini-sglang/python
        [ "$engine" = profile ] && engine=tpserve profile=$out/ttft_host.prof
        TPSERVE_HOST_PROFILE=$profile GPU_ONE_LOG=1 GPU_TAIL=0 run "ttft_${variant/:/_}" "$limit" \
            env PYTHONPATH="$path" python3 .peer/peer_bench.py --engine "$engine" --shape $L --latency 5 \
            --latency-prompt "$prompt" --latency-output 64 --label "ttft-$variant" --jsonl "$out/ttft.jsonl"
        grep -h "RESULT\|leader:\|engine ready\|Error" "/tmp/gpu_step_ttft_${variant/:/_}.log" | cut -c1-300
    done; rm -f "$out/ttft_host.prof" ;;
    prefillgraph) GPU_TAIL=16 run check_cuda_graph 150 python3 bench/check_cuda_graph.py
        for tokens in 16 512; do
            GPU_TAIL=4 run "prefill_graph_$tokens" 100 python3 bench/prefill.py --tokens $tokens --graph --iters 20 \
                --json "$out/prefill_graph_$tokens.json"
        done
        for variant in graph:16 eager:16 minisgl:16 graph:256 eager:256 minisgl:256; do
            IFS=: read -r engine prompt <<< "$variant"
            path=/tmp/site:$PWD/server flags='{}'
            [ "$engine" = graph ] && flags='{"cuda_graph_max_prefill_tokens": 512}'
            [ "$engine" = minisgl ] && path=/tmp/site:$PWD/.peer/mini-sglang/python
            [ "$engine" = minisgl ] || engine=tpserve
            TPSERVE_PEER_FLAGS=$flags GPU_ONE_LOG=1 GPU_TAIL=0 run "ttft_graph_${variant/:/_}" 150 \
                env PYTHONPATH="$path" python3 .peer/peer_bench.py --engine "$engine" --shape $L --latency 5 \
                --latency-prompt "$prompt" --latency-output 64 --label "ttft-$variant" --jsonl "$out/ttft_graph.jsonl"
            grep -h "RESULT\|leader:\|engine ready\|prefill graphs\|Error" "/tmp/gpu_step_ttft_graph_${variant/:/_}.log" | cut -c1-300
        done ;;
    ropestore) GPU_TAIL=30 run check_kernels 120 python3 bench/check_kernels.py
        for round in 1 2; do for mode in 0 1; do
            TPSERVE_ROPE_STORE=$mode GPU_ONE_LOG=1 GPU_TAIL=0 run "decode_rope_${mode}_$round" 90 python3 bench/decode.py \
                --tp 1 --batches 1,64 --iters 100 --profile graph:1
            grep -h "^graph \|^idle\|^step\|^gemm\|^other\|^rotary\|^kv write\|^norm\|^attention\|^activation" "/tmp/gpu_step_decode_rope_${mode}_$round.log" | cut -c1-160
        done; done ;;
    ggufstash) stash_gguf_part && ls -l /tmp/gguf ;;
    gguf) stash_gguf_part
        if (cd /tmp/gguf && [ -f SHA256SUMS ] && cat smollm2.gguf.part* > smollm2.gguf && sha256sum -c SHA256SUMS); then
            for variant in bfloat16:fi float16:fi float32:torch; do
                IFS=: read -r dtype attn <<< "$variant"
                GPU_TAIL=14 run "check_gguf_$dtype" 150 python3 bench/check_gguf.py --model /tmp/gguf/smollm2.gguf \
                    --dtype "$dtype" --attn "$attn"
            done
        else echo "== gguf: the parts on this machine do not make the file: $(ls /tmp/gguf)"; fi ;;
    gemv) GPU_TAIL=12 run gemv 150 python3 bench/gemv.py --rows 1,4 --json "$out/gemv.json" ;;
    *) echo "unknown step $step" ;;
    esac
done
gpu_save_jit "$out"
