"""Structured outputs (xgrammar on rank 0): every answer parses and follows its schema, regex or choices.

The tiny model's answers are random, so these assert structure: whatever the model prefers, the
token mask leaves it only continuations that keep the output valid, and the request stops when
the grammar is complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tpserve import LLM, RequestError, SamplingParams
from tpserve.engine.sampling import StructuredOutput

SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}
PROMPTS = ["Pick a colour: ", "Is it fine? ", "JSON please: "]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint) -> Iterator[LLM]:
    with LLM(str(tiny_checkpoint("llama")), tp=2) as engine:
        yield engine


def constrained(kind: str, spec: str = "", **params: object) -> SamplingParams:
    params = {"max_tokens": 64} | params
    return SamplingParams(structured=StructuredOutput(kind, spec), **params)  # type: ignore[arg-type]


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_json_schema_answers_validate(llm: LLM, temperature: float) -> None:
    outputs = llm.generate(PROMPTS, constrained("json_schema", json.dumps(SCHEMA), temperature=temperature))
    for out in outputs:
        value = json.loads(out.text)
        assert set(value) == {"color", "ok"} and value["color"] in {"red", "green", "blue"}
        assert isinstance(value["ok"], bool)
        assert out.finish_reason == "stop"
    assert llm.pages_used == 0


def test_regex_and_choice(llm: LLM) -> None:
    [date] = llm.generate([PROMPTS[0]], constrained("regex", r"20[0-9]{2}-(0[1-9]|1[0-2])", temperature=1.0))
    assert re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])", date.text), date.text
    choices = ["yes", "no", "maybe later"]
    picked = llm.generate(PROMPTS, constrained("choice", json.dumps(choices), temperature=1.0, seed=3))
    assert all(p.text in choices for p in picked)


def test_any_json_object(llm: LLM) -> None:
    [out] = llm.generate([PROMPTS[2]], constrained("json_object", temperature=0.0, max_tokens=200))
    assert out.finish_reason == "stop"
    assert isinstance(json.loads(out.text), dict)


def test_an_invalid_schema_is_refused_and_the_engine_serves_on(llm: LLM) -> None:
    with pytest.raises(RequestError, match="response_format"):
        llm.generate([PROMPTS[0]], constrained("json_schema", '{"type": "no-such-type"}'))
    plain = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert len(plain[0].token_ids) == 4


def test_constrained_and_free_requests_share_steps(llm: LLM) -> None:
    free = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    alone = llm.generate(PROMPTS, free)
    mixed = llm.generate(PROMPTS * 2, [free] * 3 + [constrained("json_schema", json.dumps(SCHEMA))] * 3)
    assert [o.token_ids for o in mixed[:3]] == [o.token_ids for o in alone], "free requests are unaffected"
    assert all(json.loads(o.text)["color"] for o in mixed[3:])
