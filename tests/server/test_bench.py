"""The offline benchmark runs on CPU with the tiny model and reports what it ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_offline_bench_prints_table_and_json(tmp_path: Path, tiny_checkpoint) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "offline.py"), "--model", str(tiny_checkpoint("qwen3")), "--tp", "2",
         "--num-requests", "5", "--min-len", "4", "--max-len", "12", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "out tok/s" in proc.stdout
    [result] = json.loads(out.read_text())
    assert result["requests"] == 5 and result["tp"] == 2
    assert 5 * 4 <= result["output_tokens"] <= 5 * 12
    assert result["output_tokens_per_s"] > 0
