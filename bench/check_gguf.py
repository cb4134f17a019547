"""Check: a GGUF checkpoint served by tpserve gives transformers' greedy text.

Both engines load the same file (transformers with `gguf_file=`; tpserve through its sliced
loader), answer the same chat questions greedily, and the answers are compared token for token.
Exits non-zero if any answer differs from transformers' with its default attention (sdpa).

In bf16 two correct implementations part at near-ties (8 mantissa bits), so the check also
answers with transformers' eager attention and prints how often transformers agrees with itself:
the spread any engine's bf16 answers are measured against.

    python bench/check_gguf.py --model SmolLM2-135M-Instruct.Q4_1.gguf            # GPU, bf16
    python bench/check_gguf.py --model F.gguf --device cpu --attn torch --dtype float32
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
REFERENCE_ATTENTION = ("sdpa", "eager")  # the first is the one tpserve must match


def transformers_answers(
    path: Path, prompts: list[list[int]], max_tokens: int, eos: int, dtype: torch.dtype, device: str, attention: str
) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype, attn_implementation=attention
    )
    model = model.to(device).eval()
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt], device=device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )
            answers.append(out[0, len(prompt) :].tolist())
    return answers


def float32_gaps(
    path: Path, prompts: list[list[int]], pairs: list[tuple[list[int], list[int]]], eos: int, device: str
) -> list[float]:
    """Where two answers part, the float32 logit of one engine's token minus the other's.

    Each pair is (ours, theirs) for the prompt at the same index; a gap near 0 (against logits
    spread over tens) is a near-tie that bf16's rounding can tip either way.
    """
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model = model.to(device).eval()
    gaps = []
    with torch.no_grad():
        for prompt, (ours, theirs) in zip(prompts, pairs):
            n = common_prefix(ours, theirs)
            context = torch.tensor([prompt + ours[:n]], device=device)
            logits = model(context).logits[0, -1].float()
            mine, other = (answer[n] if n < len(answer) else eos for answer in (ours, theirs))
            gaps.append(float(logits[mine] - logits[other]))
    return gaps


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> str:
    """'3/5 equal; first differences at tokens 6, 21' for two engines' answers to QUESTIONS."""
    parted = [common_prefix(a, b) for a, b in zip(ours, theirs) if a != b]
    where = f"; first differences at tokens {', '.join(map(str, parted))}" if parted else ""
    return f"{len(ours) - len(parted)}/{len(ours)} equal{where}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--attn", default="fi", help="tpserve's attention backend")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()

    with LLM(str(args.model), tp=args.tp, device=args.device, dtype=args.dtype, attention_backend=args.attn) as llm:
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
        sampled = llm.generate(prompts, SamplingParams(max_tokens=args.max_tokens, temperature=0))
        tokenizer = llm.tokenizer

    def visible(answer: list[int]) -> list[int]:
        return [t for t in answer if t != eos]  # EOS ends either engine's answer, or not

    ours = [visible(c.token_ids) for c in sampled]
    dtype = getattr(torch, args.dtype)
    references = {
        attention: [
            visible(a)
            for a in transformers_answers(args.model, prompts, args.max_tokens, eos, dtype, args.device, attention)
        ]
        for attention in REFERENCE_ATTENTION
    }
    theirs = references[REFERENCE_ATTENTION[0]]

    print("| question | tokens (tpserve / transformers) | equal prefix | tpserve's answer |")
    print("|---|---|---|---|")
    for question, a, b in zip(QUESTIONS, ours, theirs):
        text = tokenizer.decode(a, skip_special_tokens=True).replace("\n", " ")
        print(f"| {question} | {len(a)} / {len(b)} | {common_prefix(a, b)}{'' if a == b else ' DIFFERS'} | {text} |")
        if a != b:
            print(f"|  transformers: | | | {tokenizer.decode(b, skip_special_tokens=True)!r} |")
    # tpserve against every reference, then the references against the first: their own spread.
    ours_name, first = f"tpserve ({args.attn})", REFERENCE_ATTENTION[0]
    comparisons = [(ours_name, ours, a) for a in REFERENCE_ATTENTION]
    comparisons += [(f"transformers ({a})", references[a], first) for a in REFERENCE_ATTENTION[1:]]
    for name, answers, reference in comparisons:
        print(f"{name} against transformers ({reference}), {args.dtype}: {agreement(answers, references[reference])}")
    parted = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    if parted:
        pairs = [(ours[i], theirs[i]) for i in parted]
        gaps = float32_gaps(args.model, [prompts[i] for i in parted], pairs, eos, args.device)
        print(
            "where they part, float32 logit of tpserve's token minus transformers': "
            + ", ".join(f"{gap:+.3f}" for gap in gaps)
        )
    raise SystemExit(0 if ours == theirs else 1)


if __name__ == "__main__":
    main()
