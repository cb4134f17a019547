# Sourced by the bench/gpu_*.sh scripts: the set-up and step runner every GPU run shares.
#   gpu_setup OUT            install the carried wheels (.whl/: flashinfer, the HTTP stack; a warm
#                            machine's earlier install when none are carried), put them
#                            and server/ on PYTHONPATH, print the GPUs; results go under OUT
#   gpu_step NAME LIMIT CMD  run CMD for at most LIMIT seconds with its output in OUT/NAME.log (or,
#                            with GPU_ONE_LOG=1, appended to OUT/all.log: the device machine returns
#                            only a few files), then print its last GPU_TAIL lines, exit status, time
#   GPU_WORKLOAD             bench/offline.py's flags for nano-vllm's workload on the GPU

GPU_WORKLOAD="--device cuda --dtype bfloat16 --attn fi --context-length 2100 --num-requests 256 --min-len 100 --max-len 1024"

gpu_setup() {
    GPU_OUT=$1
    mkdir -p "$GPU_OUT"
    # A warm machine keeps /tmp/site between calls, so a call may leave .whl/ behind to carry more.
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
    elif [ ! -d /tmp/site/flashinfer ]; then
        echo "gpu_setup: no .whl/ carried and none installed on this machine" >&2; exit 1
    fi
    export PYTHONPATH=/tmp/site:$PWD/server PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

# gpu_restore_jit DIR: flashinfer/tvm-ffi JIT caches saved by an earlier call (DIR/jit_*.tgz).
# ninja rebuilds an object whose logged build time is older than any header it includes, and pip
# has just written flashinfer's headers, so they are dated back first (else a full ~80 s rebuild
# of every kernel on every call).
gpu_restore_jit() {
    local cache
    find /tmp/site -type f -exec touch -d 2000-01-01 {} +
    for cache in "$1"/jit_*.tgz; do [ -f "$cache" ] && tar xzf "$cache" -C "$HOME" && echo "restored $(basename "$cache")"; done
}

# gpu_save_jit OUT_DIR: the JIT caches as they are now (flashinfer, tvm-ffi, Triton's), one archive
# per library (< 16 MiB each).
gpu_save_jit() {
    local cache
    for cache in .cache/flashinfer .cache/tvm-ffi .triton; do
        tar czf "/tmp/jit_${cache##*/}.tgz" -C "$HOME" "$cache" 2>/dev/null
        [ "$(stat -c %s "/tmp/jit_${cache##*/}.tgz" 2>/dev/null || echo 99999999)" -lt 16000000 ] &&
            cp "/tmp/jit_${cache##*/}.tgz" "$1/"
    done
}

gpu_step() {
    local name=$1 limit=$2
    shift 2
    local log=$GPU_OUT/$name.log
    if [ "${GPU_ONE_LOG:-0}" = 1 ]; then log=/tmp/gpu_step_$name.log; fi
    echo "== $name: $*"
    local started=$SECONDS
    timeout "$limit" "$@" > "$log" 2>&1
    local rc=$?
    local summary="== $name rc=$rc $((SECONDS - started))s"
    if [ "${GPU_ONE_LOG:-0}" = 1 ]; then printf '== %s: %s\n%s\n' "$name" "$*" "$summary" | cat - "$log" >> "$GPU_OUT/all.log"; fi
    grep -v "^\[W\|UserWarning\|_warn_once" "$log" | tail -n "${GPU_TAIL:-32}"
    echo "$summary"
}
