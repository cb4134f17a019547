"""Online latency: N concurrent streaming clients against a running tpserve over HTTP.

Starts `python -m tpserve` (a model directory, or a config-only shape with dummy weights and a
synthetic tokenizer whose every id is one word), waits for /health, then for each concurrency
level runs that many clients, each sending `--requests-per-client` streaming completions one after
another (random token-id prompts, ignore_eos, fixed output length). Reports TTFT and inter-token
latency percentiles and output tokens/s, and, for a server it started, the CPU time node 0's HTTP
process (the front end: tokenizing, streaming) spent per request. Prints a table and writes JSON.

`--url URL` measures a server that is already running instead (any OpenAI-compatible one: a peer
engine's, by the same client, prompts and settings). `--api chat` sends the prompt as one user
message to /v1/chat/completions (for servers without token-id prompts, such as Mini-SGLang's): with
a shape, the synthetic tokenizer's chat template renders the message to exactly its words, so the
prompt has the same tokens either way. `--write-model-dir DIR` only writes the shape's directory
(config and synthetic tokenizer) for another engine to load, and exits. `--shared-prefix N` starts
every prompt with one of `--prefix-groups` fixed N-token prefixes (client i takes prefix i mod G):
system prompts, for engines with a prefix cache.

`--nnodes N` starts the group as N node processes on this machine (rendezvous on 127.0.0.1; on
CUDA each node sees its own tp/N GPUs through CUDA_VISIBLE_DEVICES), the way N hosts would run it.
`--greedy-prompts K` first records the greedy completions of K fixed prompts (in the JSON), so two
runs, e.g. one node against two, can be compared token for token.

    python bench/online.py --shape bench/shapes/llama-3.1-8b.json --concurrency 1,16,64 --json online.json
    python bench/online.py --model /path/to/tiny --device cpu --concurrency 1,4 --input-len 16 --output-len 8
    python bench/online.py --shape bench/shapes/qwen3-32b.json --tp 4 --nnodes 2 --greedy-prompts 8 --concurrency 16
    python bench/online.py --shape bench/shapes/llama-3.1-8b.json --api chat --url http://127.0.0.1:1919
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from model_dirs import shape_model_dir

from tpserve.engine.launcher import free_port
from tpserve.testing.health import wait_healthy

# Renders a conversation to its messages' words only: a chat prompt has exactly the tokens of its text.
WORDS_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"


def synthetic_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """A word-level tokenizer where token i > 1 is the word 'w<i>': every generated id streams as text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Ids 0 and 1 (unknown, end of text) are special: named so that no word contains them, since
    # special tokens match anywhere in a text ("w1" would split "w123").
    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>")
    fast.chat_template = WORDS_CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def prompt_words(prompt: list[int]) -> str:
    return " ".join(f"w{token}" for token in prompt)


@dataclass
class RequestTrace:
    ttft_s: float
    token_gaps_s: list[float] = field(default_factory=list)
    output_tokens: int = 0  # from the final usage chunk


def request_body(api: str, model: str, prompt: list[int], output_len: int) -> tuple[str, dict]:
    """The endpoint and body of one streamed request for `prompt` (token ids)."""
    body: dict = {
        "model": model,
        "max_tokens": output_len,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt_words(prompt)}]}
    return "/v1/completions", {**body, "prompt": prompt}


def chunk_text(api: str, chunk: dict) -> str:
    """The text a streamed chunk adds: a chat delta's content, or a completion's text."""
    if not chunk.get("choices"):
        return ""
    choice = chunk["choices"][0]
    text = (choice.get("delta") or {}).get("content") if api == "chat" else choice.get("text")
    return text or ""


async def one_request(
    client: httpx.AsyncClient, api: str, model: str, prompt: list[int], output_len: int
) -> RequestTrace:
    path, body = request_body(api, model, prompt, output_len)
    started = time.perf_counter()
    last = started
    trace: RequestTrace | None = None
    words = 0  # tokens streamed, for a server that reports no usage (each token is one word)
    usage_tokens = None
    async with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"]["completion_tokens"]
            text = chunk_text(api, chunk)
            if not text:
                continue
            words += len(text.split())
            now = time.perf_counter()
            if trace is None:
                trace = RequestTrace(ttft_s=now - started)
            else:
                trace.token_gaps_s.append(now - last)
            last = now
    if trace is None:
        raise RuntimeError("a request streamed no text")
    trace.output_tokens = usage_tokens if usage_tokens is not None else words
    return trace


@dataclass(frozen=True)
class Target:
    base_url: str
    api: str  # completions or chat
    model: str  # the served model name the requests carry


@dataclass(frozen=True)
class SharedPrefixes:
    """Prompts that start with one of `groups` fixed prefixes of `length` tokens (system prompts)."""

    length: int = 0
    groups: int = 4

    def prefixes(self, vocab: int) -> list[list[int]]:
        rng = random.Random(4321)  # the same prefixes in every run, for every engine
        return [[rng.randrange(2, vocab) for _ in range(self.length)] for _ in range(self.groups)]


async def run_level(
    target: Target,
    concurrency: int,
    requests_per_client: int,
    input_len: int,
    output_len: int,
    vocab: int,
    shared: SharedPrefixes = SharedPrefixes(),
) -> dict:
    rng = random.Random(concurrency)
    prefixes = shared.prefixes(vocab) if shared.length else []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=target.base_url, timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def client_loop(index: int) -> list[RequestTrace]:
            traces = []
            head = prefixes[index % len(prefixes)] if prefixes else []
            for _ in range(requests_per_client):
                prompt = head + [rng.randrange(2, vocab) for _ in range(input_len - len(head))]
                traces.append(await one_request(client, target.api, target.model, prompt, output_len))
            return traces

        started = time.perf_counter()
        results = await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    traces = [t for per_client in results for t in per_client]
    ttft = sorted(t.ttft_s * 1e3 for t in traces)
    itl = sorted(g * 1e3 for t in traces for g in t.token_gaps_s)
    return {
        "concurrency": concurrency,
        "requests": len(traces),
        "input_len": input_len,
        "output_len": output_len,
        "shared_prefix": shared.length,
        "seconds": elapsed,
        "output_tokens_per_s": sum(t.output_tokens for t in traces) / elapsed,
        **{f"ttft_p{p}_ms": percentile(ttft, p) for p in (50, 90, 99)},
        **{f"itl_p{p}_ms": percentile(itl, p) for p in (50, 90, 99)},
        "itl_mean_ms": statistics.fmean(itl) if itl else float("nan"),
    }


def greedy_completions(base_url: str, count: int, vocab: int, max_prompt: int, max_tokens: int) -> list[str]:
    """Greedy completions of `count` fixed random prompts (the same prompts in every run)."""
    rng = random.Random(1234)
    outputs = []
    with httpx.Client(base_url=base_url, timeout=600.0) as client:
        for _ in range(count):
            prompt = [rng.randrange(2, vocab) for _ in range(rng.randint(max(1, max_prompt // 2), max_prompt))]
            response = client.post(
                "/v1/completions",
                json={
                    "model": "bench",
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                },
            )
            response.raise_for_status()
            outputs.append(response.json()["choices"][0]["text"])
    return outputs


def start_nodes(
    args: argparse.Namespace, model_dir: Path, extra: list[str], log: object
) -> tuple[str, list[subprocess.Popen]]:
    """The server's node processes; returns node 0's URL (the one that serves the API) and them all."""
    ports = [free_port() for _ in range(args.nnodes)]
    common = [
        sys.executable,
        "-m",
        "tpserve",
        "--model",
        str(model_dir),
        "--tp",
        str(args.tp),
        "--device",
        args.device,
        "--host",
        "127.0.0.1",
        "--served-model-name",
        "bench",
        "--context-length",
        str(args.input_len + args.output_len + 16),
        *extra,
        *args.server_args.split(),
    ]
    if args.nnodes > 1:
        common += ["--nnodes", str(args.nnodes), "--dist-init-addr", f"127.0.0.1:{free_port()}"]
    per_node = args.tp // args.nnodes
    nodes = []
    for node, port in enumerate(ports):
        env = os.environ.copy()
        if args.nnodes > 1 and args.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(node * per_node + i) for i in range(per_node))
        node_flags = ["--node-rank", str(node)] if args.nnodes > 1 else []
        nodes.append(
            subprocess.Popen([*common, "--port", str(port), *node_flags], stdout=log, stderr=subprocess.STDOUT, env=env)
        )
    return f"http://127.0.0.1:{ports[0]}", nodes


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def wait_serving(base_url: str, timeout_s: float) -> None:
    """Until a server started elsewhere answers /v1/models."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/v1/models", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url} did not answer /v1/models in {timeout_s:.0f}s")
        time.sleep(1)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far, all its threads."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(
    target: Target, args: argparse.Namespace, levels: list[int], vocab: int, front_end_pid: int | None = None
) -> list[dict]:
    """One row per level; with the front end's pid (a server this script started), also the CPU
    time node 0's HTTP process spent per request: its engine ranks are other processes."""
    lengths = (args.input_len, args.output_len, vocab)
    shared = SharedPrefixes(args.shared_prefix, args.prefix_groups)
    asyncio.run(run_level(target, 1, 1, *lengths))  # warm-up (no shared prefix: nothing cached ahead)
    rows = []
    for level in levels:
        cpu_before = process_cpu_s(front_end_pid) if front_end_pid is not None else 0.0
        row = asyncio.run(run_level(target, level, args.requests_per_client, *lengths, shared))
        if front_end_pid is not None:
            row["front_end_cpu_ms_per_request"] = (process_cpu_s(front_end_pid) - cpu_before) * 1e3 / row["requests"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a model directory with weights and tokenizer")
    source.add_argument("--shape", type=Path, help="a config.json: dummy weights, synthetic tokenizer")
    parser.add_argument("--url", help="measure the OpenAI-compatible server running there (starts none)")
    parser.add_argument("--api", choices=("completions", "chat"), default="completions")
    parser.add_argument("--served-model", default="bench", help="the model name the requests carry")
    parser.add_argument("--label", default="tpserve", help="the engine's name in the table and JSON")
    parser.add_argument("--write-model-dir", type=Path, help="write the shape's model directory here and exit")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--nnodes", type=int, default=1, help="run the group as this many node processes")
    parser.add_argument(
        "--greedy-prompts", type=int, default=0, metavar="K", help="record greedy completions of K fixed prompts"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument(
        "--shared-prefix",
        type=int,
        default=0,
        metavar="N",
        help="every prompt starts with one of a few N-token prefixes",
    )
    parser.add_argument("--prefix-groups", type=int, default=4, help="how many different shared prefixes")
    parser.add_argument("--server-args", default="", help="extra flags for the server, one string")
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--log", type=Path, help="where the server's output goes (default: discarded)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if not 0 <= args.shared_prefix < args.input_len or args.prefix_groups < 1:
        parser.error("--shared-prefix must be below --input-len, and --prefix-groups at least 1")
    if args.api == "chat" and args.shape is None:
        parser.error("--api chat needs --shape: its prompts are words of the synthetic tokenizer")
    if args.write_model_dir is not None:
        if args.shape is None:
            parser.error("--write-model-dir needs --shape")
        args.write_model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.shape, args.write_model_dir / "config.json")
        synthetic_tokenizer(args.write_model_dir, json.loads(args.shape.read_text())["vocab_size"])
        return
    greedy: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.shape is not None:
            model_dir = stack.enter_context(shape_model_dir(args.shape))
            synthetic_tokenizer(model_dir, json.loads(args.shape.read_text())["vocab_size"])
            extra = ["--load-format", "dummy"]
        else:
            model_dir, extra = args.model, []
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        if args.url is not None:
            target = Target(args.url.rstrip("/"), args.api, args.served_model)
            wait_serving(target.base_url, args.startup_timeout)
            rows = measure(target, args, levels, vocab)
        else:
            log = open(args.log, "w") if args.log else subprocess.DEVNULL
            base_url, nodes = start_nodes(args, model_dir, extra, log)
            try:
                wait_healthy(base_url, nodes[0], args.startup_timeout)
                greedy = greedy_completions(
                    base_url, args.greedy_prompts, vocab, args.input_len, min(32, args.output_len)
                )
                rows = measure(Target(base_url, args.api, "bench"), args, levels, vocab, nodes[0].pid)
            finally:
                for node in reversed(nodes):
                    node.terminate()
                for node in nodes:
                    try:
                        node.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        node.kill()
    print(
        f"online, {args.label}, {args.api}, tp={args.tp}, nnodes={args.nnodes}, input {args.input_len}, "
        f"output {args.output_len} tokens, {args.requests_per_client} requests per client"
        + (f", shared prefixes {args.prefix_groups} x {args.shared_prefix} tokens" if args.shared_prefix else "")
    )
    print(
        f"{'clients':>8}{'out tok/s':>11}{'TTFT p50':>10}{'p90':>8}{'p99':>8}{'ITL p50':>9}{'p90':>8}{'p99':>8}"
        f"{'front-end CPU/req':>19}  (ms)"
    )
    for r in rows:
        front_end = r.get("front_end_cpu_ms_per_request")
        print(
            f"{r['concurrency']:>8}{r['output_tokens_per_s']:>11.1f}{r['ttft_p50_ms']:>10.1f}{r['ttft_p90_ms']:>8.1f}"
            f"{r['ttft_p99_ms']:>8.1f}{r['itl_p50_ms']:>9.2f}{r['itl_p90_ms']:>8.2f}{r['itl_p99_ms']:>8.2f}"
            f"{front_end if front_end is not None else float('nan'):>19.2f}"
        )
    if args.json:
        for row in rows:
            row["engine"], row["api"] = args.label, args.api
        result = (
            {"tp": args.tp, "nnodes": args.nnodes, "levels": rows, "greedy": greedy} if args.greedy_prompts else rows
        )
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
