"""GPU check: overlap scheduling on and off give the same greedy tokens (dummy weights, bf16).

Both engines get the same requests at once, greedy with ignore_eos, so both plan the same
batches step for step (a request's last step is known when it is planned); any difference is a
bug in the overlapped path (a token read from the wrong row or step), not numerics.

    python bench/check_overlap.py --shape bench/shapes/qwen3-0.6b.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from model_dirs import SHAPES, shape_model_dir

from tpserve import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=SHAPES / "qwen3-0.6b.json")
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()
    rng = random.Random(0)
    with shape_model_dir(args.shape) as model_dir:
        vocab = 32000
        prompts = [[rng.randrange(vocab) for _ in range(rng.randint(20, 400))] for _ in range(args.requests)]
        params = [SamplingParams(max_tokens=rng.randint(1, 120), temperature=0, ignore_eos=True) for _ in prompts]
        outputs = {}
        for overlap in (True, False):
            with LLM(
                str(model_dir),
                device="cuda",
                dtype="bfloat16",
                load_format="dummy",
                attention_backend="fi",
                context_length=1024,
                disable_overlap_schedule=not overlap,
            ) as llm:
                llm.generate(prompts[:4], params[:4])  # warm-up
                started = time.perf_counter()
                outputs[overlap] = [o.token_ids for o in llm.generate(prompts, params)]
                print(f"overlap {'on ' if overlap else 'off'}: {time.perf_counter() - started:.2f}s")
    same = sum(a == b for a, b in zip(outputs[True], outputs[False]))
    lengths_ok = all(len(t) == p.max_tokens for t, p in zip(outputs[True], params))
    print(f"identical outputs: {same}/{len(prompts)}; every output has max_tokens tokens: {lengths_ok}")
    if same != len(prompts) or not lengths_ok:
        raise SystemExit("FAIL")
    print("OK")


if __name__ == "__main__":
    main()
