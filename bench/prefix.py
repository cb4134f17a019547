"""Shared-prefix workloads with the radix prefix cache on and off, in one run, through `tpserve.LLM`.

- `system`: P system prompts of S tokens, Q questions of q tokens after each (all submitted at once,
  one request per system prompt first, so the rest find it cached).
- `chat`: C conversations of T turns; each turn's prompt is the last prompt, its answer and q new
  tokens (the conversations run side by side, turn by turn).

Per workload and setting: prompt tokens computed (not taken from the cache), seconds, output
tokens/s, and time to first token p50/p99 (from submission, polled every 2 ms).

    python bench/prefix.py --device cpu                                   # tiny built-in model
    python bench/prefix.py --shape bench/shapes/qwen3-0.6b.json --device cuda --system-len 2048 \\
        --prompts 32 --questions 16 --question-len 64 --output-len 64
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from model_dirs import shape_model_dir

from tpserve import LLM, SamplingParams
from tpserve.testing.tiny_checkpoint import build_tiny_checkpoint


@dataclass(frozen=True)
class PrefixResult:
    workload: str
    radix: bool
    requests: int
    prompt_tokens: int
    computed_prompt_tokens: int
    output_tokens: int
    seconds: float
    ttft_p50_ms: float
    ttft_p99_ms: float


def run_batch(llm: LLM, prompts: list[list[int]], output_len: int) -> tuple[list[list[int]], list[float]]:
    """Submit all prompts at once; their outputs and times to first token (seconds)."""
    longest = max(map(len, prompts)) + output_len
    if longest > llm.engine_info.max_model_len:
        raise SystemExit(
            f"a request needs {longest} tokens; the context is {llm.engine_info.max_model_len}: shorten the workload"
        )
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    submitted = time.perf_counter()
    ids = llm.submit(prompts, params)
    first: dict[str, float] = {}
    while len(first) < len(ids):
        llm.poll(0.002)
        now = time.perf_counter()
        for request_id in ids:
            if request_id not in first and llm.progress(request_id).token_ids:
                first[request_id] = now - submitted
    outputs = llm.wait(ids)
    return [o.token_ids for o in outputs], [first[r] for r in ids]


def system_prompts(args: argparse.Namespace, vocab: int, rng: random.Random) -> list[list[list[int]]]:
    """Per system prompt, its requests (system prompt + one question each)."""
    groups = []
    for _ in range(args.prompts):
        system = [rng.randrange(vocab) for _ in range(args.system_len)]
        groups.append(
            [system + [rng.randrange(vocab) for _ in range(args.question_len)] for _ in range(args.questions)]
        )
    return groups


def measure(llm: LLM, workload: str, args: argparse.Namespace, radix: bool) -> PrefixResult:
    rng = random.Random(args.seed)
    vocab = llm.model_config.vocab_size
    before = llm.cache
    ttfts: list[float] = []
    prompt_tokens = output_tokens = requests = 0
    started = time.perf_counter()
    if workload == "system":
        groups = system_prompts(args, vocab, rng)
        waves = [[g[0] for g in groups], [p for g in groups for p in g[1:]]]
        for prompts in waves:
            outs, times = run_batch(llm, prompts, args.output_len)
            ttfts += times
            prompt_tokens += sum(map(len, prompts))
            output_tokens += sum(map(len, outs))
            requests += len(prompts)
    else:
        conversations = [[rng.randrange(vocab) for _ in range(args.system_len)] for _ in range(args.conversations)]
        for _ in range(args.turns):
            prompts = [c + [rng.randrange(vocab) for _ in range(args.question_len)] for c in conversations]
            outs, times = run_batch(llm, prompts, args.output_len)
            ttfts += times
            prompt_tokens += sum(map(len, prompts))
            output_tokens += sum(map(len, outs))
            requests += len(prompts)
            conversations = [p + o for p, o in zip(prompts, outs)]
    seconds = time.perf_counter() - started
    hits = llm.cache.prefix_hit_tokens - before.prefix_hit_tokens
    ttfts.sort()
    return PrefixResult(
        workload=workload,
        radix=radix,
        requests=requests,
        prompt_tokens=prompt_tokens,
        computed_prompt_tokens=prompt_tokens - hits,
        output_tokens=output_tokens,
        seconds=seconds,
        ttft_p50_ms=1e3 * statistics.median(ttfts),
        ttft_p99_ms=1e3 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model directory (default: a tiny built-in model)")
    parser.add_argument("--shape", type=Path, help="a model shape (bench/shapes/*.json), dummy weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--attn", default="torch", help="attention backend (fi on a GPU)")
    parser.add_argument("--workloads", default="system,chat")
    parser.add_argument("--prompts", type=int, default=4, help="system prompts")
    parser.add_argument("--questions", type=int, default=8, help="questions per system prompt")
    parser.add_argument("--system-len", type=int, default=128)
    parser.add_argument("--question-len", type=int, default=8)
    parser.add_argument("--output-len", type=int, default=8)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        load_format = "auto"
        if args.shape:
            model_path = str(stack.enter_context(shape_model_dir(args.shape)))
            load_format = "dummy"
        elif args.model:
            model_path = args.model
        else:
            scratch = stack.enter_context(tempfile.TemporaryDirectory())
            model_path = str(build_tiny_checkpoint(Path(scratch) / "tiny"))
        results = []
        for radix in (True, False):
            flags = dict(
                tp=args.tp,
                device=args.device,
                dtype=args.dtype,
                attention_backend=args.attn,
                load_format=load_format,
                disable_radix_cache=not radix,
                max_total_tokens=args.max_total_tokens,
            )
            with LLM(model_path, **flags) as llm:
                llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
                results += [measure(llm, w, args, radix) for w in args.workloads.split(",")]
    print(
        f"{'workload':>8} {'radix':>5} {'reqs':>5} {'prompt tok':>10} {'computed':>9} {'seconds':>8} "
        f"{'out tok/s':>10} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12}"
    )
    for r in sorted(results, key=lambda r: (r.workload, not r.radix)):
        print(
            f"{r.workload:>8} {'on' if r.radix else 'off':>5} {r.requests:>5} {r.prompt_tokens:>10} "
            f"{r.computed_prompt_tokens:>9} {r.seconds:>8.2f} {r.output_tokens / r.seconds:>10.1f} "
            f"{r.ttft_p50_ms:>12.1f} {r.ttft_p99_ms:>12.1f}"
        )


if __name__ == "__main__":
    main()
