"""GPU check: a GGUF checkpoint served by tpserve gives transformers' greedy text, in bf16.

Both engines load the same file (transformers with `gguf_file=`, dequantized to bf16 on the
GPU; tpserve through its sliced loader), answer the same chat questions greedily, and the
answers are compared token for token. Exits non-zero if any answer differs.

    python bench/check_gguf.py --model SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tpserve import LLM, SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 plus 7?",
    "Give me a short tip for staying healthy.",
    "Write one sentence about the ocean.",
]


def transformers_answers(
    path: Path, prompts: list[list[int]], max_tokens: int, eos: int, dtype: torch.dtype
) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    model = model.cuda().eval()
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt], device="cuda"),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device="cuda"),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )
            answers.append(out[0, len(prompt) :].tolist())
    return answers


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--attn", default="fi")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()

    with LLM(str(args.model), tp=args.tp, device="cuda", dtype=args.dtype, attention_backend=args.attn) as llm:
        assert llm.tokenizer is not None
        eos = llm.model_config.eos_token_ids[0]
        prompts = [
            llm.tokenizer.encode(
                llm.tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )
            for q in QUESTIONS
        ]
        ours = [c.token_ids for c in llm.generate(prompts, SamplingParams(max_tokens=args.max_tokens, temperature=0))]
        tokenizer = llm.tokenizer
    theirs = transformers_answers(args.model, prompts, args.max_tokens, eos, getattr(torch, args.dtype))

    failures = 0
    print("| question | tokens (tpserve / transformers) | equal prefix | tpserve's answer |")
    print("|---|---|---|---|")
    for question, a, b in zip(QUESTIONS, ours, theirs):
        a_visible = [t for t in a if t != eos]
        b_visible = [t for t in b if t != eos]
        same = a_visible == b_visible
        failures += not same
        text = tokenizer.decode(a_visible, skip_special_tokens=True).replace("\n", " ")
        print(
            f"| {question} | {len(a_visible)} / {len(b_visible)} | {common_prefix(a_visible, b_visible)}{'' if same else ' DIFFERS'} | {text} |"
        )
        if not same:
            print(f"|  transformers: | | | {tokenizer.decode(b_visible, skip_special_tokens=True)!r} |")
    print(f"{len(QUESTIONS) - failures}/{len(QUESTIONS)} answers equal")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
