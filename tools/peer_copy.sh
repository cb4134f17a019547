#!/usr/bin/env bash
# .peer/: our copy of ../shared/peers (Mini-SGLang and its harness) to carry to the GPU machine
# (`carry: [".peer"]`; ../shared itself does not travel). Two changes to the harness's run.sh, both
# about start-up only: the wheels bench/gpu_lib.sh has installed are not installed again, and their
# files are dated back, so the JIT caches restored from an earlier call stay valid (ninja rebuilds an
# object older than a header it includes; see bench/gpu_lib.sh, gpu_restore_jit). One to
# peer_bench.py: tpserve's engine settings can be added through TPSERVE_PEER_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.peer/" .git/info/exclude 2>/dev/null || echo "/.peer/" >> .git/info/exclude
mkdir -p .peer
cp -r ../shared/peers/. .peer/
python3 - <<'PATCH'
from pathlib import Path
run = Path(".peer/run.sh")
text = run.read_text()
install = "python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1"
kept = (
    "[ -d /tmp/site/flashinfer ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1\n"
    "find /tmp/site -type f -newermt 2000-01-02 -exec touch -d 2000-01-01 {} +"
)
run.write_text(text.replace(install, kept))
# TPSERVE_PEER_FLAGS (a JSON object) adds engine settings to tpserve's side, e.g. a variant
# measured beside its default in one call: '{"cuda_graph_max_prefill_tokens": 512}'.
bench = Path(".peer/peer_bench.py")
flags = 'page_size=16, attention_backend="fi", context_length=2100,\n        )\n'
bench.write_text(bench.read_text().replace(
    flags, flags + '        self.flags |= json.loads(__import__("os").environ.get("TPSERVE_PEER_FLAGS") or "{}")\n'
))
PATCH
grep -q "touch -d 2000-01-01" .peer/run.sh || { echo "tools/peer_copy.sh: run.sh changed upstream, patch it by hand" >&2; exit 1; }
grep -q "TPSERVE_PEER_FLAGS" .peer/peer_bench.py || { echo "tools/peer_copy.sh: peer_bench.py changed upstream, patch it by hand" >&2; exit 1; }
du -sh .peer
