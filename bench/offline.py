"""Offline throughput: N requests with random prompt/output lengths through `tpserve.LLM`.

The workload follows nano-vllm's benchmark: random token prompts, input and output lengths
uniform in [min, max], ignore_eos so every request produces exactly its output length.

    python bench/offline.py --device cpu                    # tiny built-in model
    python bench/offline.py --model /models/llama-3.1-8b --tp 2 --load-format dummy \\
        --num-requests 256 --min-len 100 --max-len 1024 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from model_dirs import shape_model_dir

from tpserve import LLM, SamplingParams
from tpserve.testing.tiny_checkpoint import build_tiny_checkpoint


@dataclass(frozen=True)
class OfflineResult:
    engine: str
    tp: int
    requests: int
    input_tokens: int
    output_tokens: int
    seconds: float

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def total_tokens_per_s(self) -> float:
        return (self.input_tokens + self.output_tokens) / self.seconds


def make_workload(num_requests: int, min_len: int, max_len: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        ([rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))], rng.randint(min_len, max_len))
        for _ in range(num_requests)
    ]


def fit_to_context(workload: list[tuple[list[int], int]], max_len: int) -> list[tuple[list[int], int]]:
    """Trim prompts so prompt + output fits `max_len`; drop requests with no prompt left."""
    fitted = [(p[: max_len - 1 - n] if len(p) + n >= max_len else p, n) for p, n in workload]
    return [(p, n) for p, n in fitted if p]


def run_tpserve(args: argparse.Namespace, model_path: str) -> tuple[OfflineResult, list[tuple[int, int]]]:
    """The measured run, and the (input, output) lengths it ran after fitting the context."""
    engine_flags = dict(
        tp=args.tp,
        device=args.device,
        dtype=args.dtype,
        load_format=args.load_format,
        max_prefill_length=args.max_prefill_length,
        page_size=args.page_size,
        attention_backend=args.attn,
        context_length=args.context_length,
        disable_cuda_graph=args.disable_cuda_graph,
        disable_custom_all_reduce=args.disable_custom_all_reduce,
    )
    with LLM(model_path, **engine_flags) as llm:
        vocab = llm.model_config.vocab_size
        workload = fit_to_context(
            make_workload(args.num_requests, args.min_len, args.max_len, vocab, args.seed),
            llm.engine_info.max_model_len,
        )
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))  # warm-up
        started = time.perf_counter()
        outputs = llm.generate(
            [p for p, _ in workload],
            [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for _, n in workload],
        )
        seconds = time.perf_counter() - started
    result = OfflineResult(
        engine="tpserve",
        tp=args.tp,
        requests=len(workload),
        input_tokens=sum(len(p) for p, _ in workload),
        output_tokens=sum(len(o.token_ids) for o in outputs),
        seconds=seconds,
    )
    return result, [(len(p), n) for p, n in workload]


def run_transformers(args: argparse.Namespace, model_path: str, count: int) -> OfflineResult:
    """transformers' `generate` on the first `count` requests of the same workload, one padded batch.

    Useful tokens are what each request asked for; the padding tokens a batch generates beyond a
    request's own length are not counted.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if args.device == "cuda" else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = AutoConfig.from_pretrained(model_path)
    if args.load_format == "dummy":
        with torch.device(device):  # random init where it runs: an 8B model initialises slowly on CPU
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = model.to(device).eval()
    workload = make_workload(args.num_requests, args.min_len, args.max_len, config.vocab_size, args.seed)[:count]
    longest = max(len(p) for p, _ in workload)
    input_ids = torch.zeros(len(workload), longest, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, (prompt, _) in enumerate(workload):  # left padding, as generate expects
        input_ids[row, longest - len(prompt) :] = torch.tensor(prompt)
        mask[row, longest - len(prompt) :] = 1
    new_tokens = max(n for _, n in workload)
    with torch.no_grad():
        model.generate(
            input_ids[:, :8].to(device), attention_mask=mask[:, :8].to(device), max_new_tokens=2, do_sample=False
        )
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(
            input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return OfflineResult(
        "transformers", 1, len(workload), sum(len(p) for p, _ in workload), sum(n for _, n in workload), seconds
    )


def print_table(results: list[OfflineResult]) -> None:
    header = f"{'engine':<14}{'tp':>4}{'requests':>10}{'input tok':>12}{'output tok':>12}{'seconds':>10}{'out tok/s':>12}{'total tok/s':>13}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.engine:<14}{r.tp:>4}{r.requests:>10}{r.input_tokens:>12}{r.output_tokens:>12}"
            f"{r.seconds:>10.2f}{r.output_tokens_per_s:>12.1f}{r.total_tokens_per_s:>13.1f}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        help="HF model dir (config.json only is enough with --load-format dummy); default: tiny built-in model",
    )
    parser.add_argument(
        "--shape", type=Path, help="a config.json of a model shape (bench/shapes/); implies --load-format dummy"
    )
    parser.add_argument("--attn", default="torch", help="attention backend (fi on GPU)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--context-length", type=int, help="cap on tokens per request (default: the model's)")
    parser.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--max-prefill-length", type=int, default=8192)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--disable-cuda-graph", action="store_true")
    parser.add_argument("--disable-custom-all-reduce", action="store_true")
    parser.add_argument(
        "--transformers",
        type=int,
        default=0,
        metavar="N",
        help="also run transformers' generate on the first N requests (one padded batch)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        if args.shape:
            args.load_format = "dummy"
            model_path = str(stack.enter_context(shape_model_dir(args.shape)))
        else:
            scratch = stack.enter_context(tempfile.TemporaryDirectory())
            model_path = args.model or str(build_tiny_checkpoint(Path(scratch) / "tiny"))
        measured, lengths = run_tpserve(args, model_path)
        results = [measured]
        if args.transformers:
            results.append(run_transformers(args, model_path, args.transformers))
        if args.device == "cuda":
            results.append(run_roofline(args, model_path, measured, lengths))
    print_table(results)
    if args.json:
        args.json.write_text(
            json.dumps([asdict(r) | {"output_tokens_per_s": r.output_tokens_per_s} for r in results], indent=2)
        )


def run_roofline(
    args: argparse.Namespace, model_path: str, measured: OfflineResult, lengths: list[tuple[int, int]]
) -> OfflineResult:
    """The workload `measured` ran, at the HBM floor (bandwidth measured now, on this GPU)."""
    import torch
    from roofline import copy_bandwidth, workload_roofline_s

    from tpserve.models.config import ModelConfig

    model = ModelConfig.from_dir(model_path)
    bandwidth = copy_bandwidth(torch.device("cuda", 0))
    seconds = workload_roofline_s(lengths, model, bandwidth, args.tp)
    return OfflineResult(
        "HBM roofline", args.tp, measured.requests, measured.input_tokens, measured.output_tokens, seconds
    )


if __name__ == "__main__":
    main()
