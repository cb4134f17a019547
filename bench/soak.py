"""Soak: concurrent streaming clients against a real server for a set time; prints what stayed clean.

    python bench/soak.py --clients 256 --seconds 60          # tiny built-in model, tp=2 on CPU
    python bench/soak.py --url http://127.0.0.1:30000 --clients 512 --seconds 600

A quarter of the requests walk away mid-prefill or mid-stream; others ask for n > 1 or stop strings.
Afterwards nothing may run or wait, no KV page may stay in use, and the server's asyncio task count
and resident memory are compared with a baseline taken after a short warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tpserve.engine.launcher import free_port
from tpserve.testing.health import wait_healthy
from tpserve.testing.soak import soak, wait_quiet
from tpserve.testing.tiny_checkpoint import build_tiny_checkpoint


@contextlib.contextmanager
def tiny_server(tp: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as workdir:
        model = build_tiny_checkpoint(Path(workdir) / "tiny")
        port = free_port()
        args = ["--model", str(model), "--tp", str(tp), "--device", "cpu", "--served-model-name", "tiny"]
        server = subprocess.Popen([sys.executable, "-m", "tpserve", *args, "--port", str(port), "--host", "127.0.0.1"])
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, server, 180)
            yield url
        finally:
            server.terminate()
            server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server serving the model as 'tiny' (default: start one)")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with contextlib.nullcontext(args.url) if args.url else tiny_server(args.tp) as url:
        asyncio.run(soak(url, 32, 3.0, seed=args.seed + 1))
        before = wait_quiet(url)
        report = asyncio.run(soak(url, args.clients, args.seconds, seed=args.seed))
        after = wait_quiet(url)
    rows = [
        ("clients", args.clients),
        ("seconds", round(report.seconds, 1)),
        *((f"requests: {b}", n) for b, n in sorted(report.requests.items())),
        ("completed and checked", report.completed),
        ("disconnected mid-request", report.disconnected),
        ("malformed answers", len(report.malformed)),
        ("refused (status: count)", dict(report.refused) or 0),
        (
            "running / waiting after",
            f"{after['tpserve_num_requests_running']:.0f} / {after['tpserve_num_requests_waiting']:.0f}",
        ),
        ("KV pages in use after", f"{after['tpserve_kv_cache_pages_used']:.0f}"),
        (
            "asyncio tasks before / after",
            f"{before['tpserve_event_loop_tasks']:.0f} / {after['tpserve_event_loop_tasks']:.0f}",
        ),
        (
            "RSS MiB before / after",
            f"{before['process_resident_memory_bytes'] / 2**20:.0f} / {after['process_resident_memory_bytes'] / 2**20:.0f}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'what':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    for line in report.malformed[:10]:
        print("malformed:", line)


if __name__ == "__main__":
    main()
