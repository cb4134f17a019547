"""Triton kernels run by Triton's interpreter on CPU, in a process of their own.

Triton reads TRITON_INTERPRET when it is first imported, so a check script runs in a fresh process
with it set; the script prints one JSON line (its results), which comes back parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest


def run_interpreted(script: str, cases: list[Any]) -> Any:
    """`script` run with `json.dumps(cases)` as its argument; its last output line, parsed."""
    pytest.importorskip("triton")
    env = os.environ | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cases)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])
