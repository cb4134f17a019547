"""Tool calling and reasoning through the real `openai` client against `python -m tpserve`.

The tiny model's answers are random, so the model's own tool-call syntax is produced with a regex
constraint (`guided_regex`), which the server's hermes parser then reads back as it would a real
model's; `tool_choice: required` and named functions are constrained by the server itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .server_process import ServerProcess, healthy_server

CITIES = ["Paris", "Rome"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": CITIES}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["CET", "UTC"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# What a hermes-style model (Qwen2.5/Qwen3) writes to call get_weather, as a regex.
HERMES_CALL = 'Checking\\. <tool_call>\n\\{"name": "get_weather", "arguments": \\{"city": "Paris"\\}\\}\n</tool_call>'


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model: Path = tiny_checkpoint("llama")
    log = tmp_path_factory.mktemp("tools") / "server.log"
    args = ["--model", str(model), "--device", "cpu", "--served-model-name", "tiny"]
    with healthy_server([*args, "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"], log) as proc:
        yield proc


@pytest.fixture()
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def _streamed_calls(stream: Any) -> tuple[str, list[dict[str, str]], str | None]:
    """Content, tool calls (name, arguments) and finish reason a client assembles from a stream."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def _whole_calls(response: Any) -> tuple[str, list[dict[str, str]], str | None]:
    """Content, tool calls (name, arguments) and finish reason of a non-streamed answer."""
    message = response.choices[0].message
    assert all(c.id.startswith("call_") and c.type == "function" for c in message.tool_calls or [])
    calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
    return message.content or "", calls, response.choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_always_returns_a_valid_call(client: openai.OpenAI, stream: bool) -> None:
    request = {
        "model": "tiny",
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 64,
        "temperature": 1.0,
        "seed": 3,
    }
    if stream:
        content, calls, finish = _streamed_calls(client.chat.completions.create(stream=True, **request))
    else:
        content, calls, finish = _whole_calls(client.chat.completions.create(**request))
    assert finish == "tool_calls" and content == ""
    [call] = calls
    arguments = json.loads(call["arguments"])
    assert call["name"] in ("get_weather", "get_time")
    assert arguments in (
        [{"city": c} for c in CITIES] if call["name"] == "get_weather" else [{"zone": "CET"}, {"zone": "UTC"}]
    )


def test_named_tool_choice_returns_that_functions_arguments(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=64,
    )
    choice = response.choices[0]
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_time" and json.loads(call.function.arguments)["zone"] in ("CET", "UTC")
    assert choice.finish_reason == "stop"  # OpenAI's finish reason for a forced function


@pytest.mark.parametrize("stream", [False, True])
def test_auto_tool_choice_parses_the_models_hermes_syntax(client: openai.OpenAI, stream: bool) -> None:
    request = {
        "model": "tiny",
        "messages": ASK,
        "tools": [WEATHER],
        "max_tokens": 96,
        "extra_body": {"guided_regex": HERMES_CALL},
    }
    if stream:
        content, calls, finish = _streamed_calls(client.chat.completions.create(stream=True, **request))
    else:
        content, calls, finish = _whole_calls(client.chat.completions.create(**request))
    assert content == "Checking."
    assert calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert finish == "tool_calls"


def test_tool_choice_none_leaves_the_syntax_as_text(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=96,
        extra_body={"guided_regex": HERMES_CALL},
    )
    message = response.choices[0].message
    assert message.tool_calls is None and "<tool_call>" in (message.content or "")
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_parser_splits_thinking_from_the_answer(client: openai.OpenAI, stream: bool) -> None:
    request = {
        "model": "tiny",
        "messages": ASK,
        "max_tokens": 64,
        "extra_body": {"guided_regex": "<think>\nhot and sunny\n</think>\n\nParis is warm\\."},
    }
    if stream:
        reasoning, content = "", ""
        for chunk in client.chat.completions.create(stream=True, **request):
            for choice in chunk.choices:
                reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
                content += choice.delta.content or ""
        reasoning = reasoning.strip()
    else:
        message = client.chat.completions.create(**request).choices[0].message
        reasoning, content = (message.model_extra or {})["reasoning_content"], message.content or ""
    assert reasoning == "hot and sunny" and content == "Paris is warm."


def test_conversations_with_tool_calls_and_results_are_accepted(client: openai.OpenAI, server: ServerProcess) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    response = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], max_tokens=4)
    assert response.usage is not None
    short = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER], max_tokens=4)
    assert short.usage is not None and response.usage.prompt_tokens > short.usage.prompt_tokens
    bad = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": ASK,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
    )
    assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
