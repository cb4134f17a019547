"""`make demo`: a tp=2 server on CPU with a tiny built-in model, queried with the openai client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import openai

from ..engine.launcher import free_port
from ..testing.health import ServerNotHealthy, wait_healthy
from ..testing.tiny_checkpoint import build_tiny_checkpoint

CHECKPOINT = Path(os.environ.get("TPSERVE_DEMO_MODEL", ".cache/tiny-llama"))
HEALTH_TIMEOUT_S = 180


def main() -> None:
    if not (CHECKPOINT / "config.json").is_file():
        print(f"demo: building the tiny checkpoint in {CHECKPOINT}")
        build_tiny_checkpoint(CHECKPOINT)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "tpserve",
        "--model",
        str(CHECKPOINT),
        "--tp",
        "2",
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny-llama",
        "--log-level",
        "warning",
    ]
    print("demo: starting", " ".join(command[1:]))
    server = subprocess.Popen(command)
    try:
        try:
            startup = wait_healthy(url, server, HEALTH_TIMEOUT_S)
        except ServerNotHealthy as exc:
            raise SystemExit(f"demo: {exc}") from exc
        print(f"demo: /health is 200 after {startup:.1f}s (both ranks ready, warm-up done)")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        started = time.monotonic()
        reply = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Say hello to tensor parallelism."}],
            max_tokens=24,
            temperature=0,
        )
        elapsed = time.monotonic() - started
        usage = reply.usage
        assert usage is not None, "tpserve always reports usage"
        print(f"demo: answer ({reply.choices[0].finish_reason}): {reply.choices[0].message.content!r}")
        print(
            f"demo: {usage.completion_tokens} tokens in {elapsed * 1000:.0f} ms "
            f"({usage.completion_tokens / elapsed:.1f} tokens/s); prompt {usage.prompt_tokens} tokens"
        )
        print("demo: (random weights: the text is gibberish, the plumbing is real)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
