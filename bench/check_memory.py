"""GPU check: at the default --mem-fraction-static the engine survives its largest steps.

The KV cache takes what the memory fraction leaves after weights, CUDA graphs and the measured
peak of one step (engine/memory_probe.py). This fills every running slot with requests sampling
top-k/top-p with 20 log-probabilities each, while prompts of --max-prefill-length tokens keep
arriving, so the largest prefill step, a full sampling batch and a full decode batch all happen
with the cache in use. It fails if the engine dies (out of memory) or a request is lost.

    python bench/check_memory.py --shape bench/shapes/llama-3.1-8b.json
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from model_dirs import SHAPES, shape_model_dir

from tpserve import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=SHAPES / "llama-3.1-8b.json")
    parser.add_argument("--max-running", type=int, default=256)
    parser.add_argument("--max-prefill", type=int, default=8192)
    args = parser.parse_args()
    rng = random.Random(0)
    with (
        shape_model_dir(args.shape) as model_dir,
        LLM(
            str(model_dir),
            device="cuda",
            dtype="bfloat16",
            load_format="dummy",
            attention_backend="fi",
            max_running_requests=args.max_running,
            max_prefill_length=args.max_prefill,
            context_length=args.max_prefill + 256,
        ) as llm,
    ):
        heavy = SamplingParams(max_tokens=64, temperature=1.0, top_p=0.9, top_k=50, logprobs=20, ignore_eos=True)
        short = [[rng.randrange(32000) for _ in range(rng.randint(16, 256))] for _ in range(args.max_running)]
        long = [[rng.randrange(32000) for _ in range(args.max_prefill)] for _ in range(8)]
        ids = llm.submit(short, heavy) + llm.submit(long, heavy)
        done = llm.wait(ids, timeout_s=600)
        lengths_ok = all(len(o.token_ids) == 64 and len(o.logprobs) == 64 for o in done)
        print(f"{len(done)} requests finished, every one with 64 tokens and log-probabilities: {lengths_ok}")
        if not lengths_ok:
            raise SystemExit("FAIL")
    print("OK")


if __name__ == "__main__":
    main()
