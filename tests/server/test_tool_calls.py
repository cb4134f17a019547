"""Tool-call and reasoning parsing of chat answers, whole and streamed in any split of the text."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpserve.entrypoints.chat_output import ChatStreamShaper, ToolMode, shape_message
from tpserve.entrypoints.openai_protocol import ChatCompletionRequest
from tpserve.entrypoints.openai_serving import BadRequest, ChatParsers, OpenAIServing
from tpserve.entrypoints.reasoning import ThinkTags
from tpserve.entrypoints.tool_calls import (
    HermesParser,
    Llama3JsonParser,
    detect_tool_call_parser,
    parse_required_calls,
    required_calls_schema,
)

HERMES_ANSWER = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
)


def test_hermes_calls_are_parsed_with_the_text_before_them() -> None:
    content, calls = HermesParser().parse(HERMES_ANSWER)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]


def test_malformed_hermes_call_leaves_the_text_as_it_is() -> None:
    broken = 'Hi <tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    assert HermesParser().parse(broken) == (broken, [])
    assert HermesParser().parse("no call here") == ("no call here", [])


def test_llama3_json_calls_with_python_tag_and_semicolons() -> None:
    answer = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    content, calls = Llama3JsonParser().parse(answer)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {})]
    assert Llama3JsonParser().parse("The answer is {x}.") == ("The answer is {x}.", [])


def test_parser_detected_from_the_chat_template() -> None:
    assert detect_tool_call_parser("{% if tools %}<tool_call>{{ tool }}</tool_call>{% endif %}") == "hermes"
    assert detect_tool_call_parser("{{ '<|python_tag|>' }} ipython") == "llama3_json"
    assert detect_tool_call_parser("{{ messages }}") is None and detect_tool_call_parser(None) is None


def test_required_schema_and_its_answers() -> None:
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}]
    schema = required_calls_schema(tools, parallel=False)
    assert schema["maxItems"] == 1 and schema["minItems"] == 1
    assert "maxItems" not in required_calls_schema(tools, parallel=True)
    [call] = parse_required_calls('[{"name": "f", "parameters": {"x": 3}}]')
    assert call.name == "f" and json.loads(call.arguments) == {"x": 3}
    assert parse_required_calls('[{"name": "f", "parameters": {"x": 3}') == []


def test_reasoning_split_of_whole_answers() -> None:
    think = ThinkTags()
    assert think.split("<think>\nhmm\n</think>\n\nParis.") == ("hmm", "Paris.")
    assert think.split("hmm</think>Paris.") == ("hmm", "Paris.")  # <think> was in the prompt
    assert think.split("<think>still thinking") == ("still thinking", "")
    assert think.split("Paris.") == (None, "Paris.")


def _streamed(text: str, cuts: list[int], think: ThinkTags | None, tools: ToolMode | None) -> dict[str, Any]:
    """The message a client assembles from the shaper's deltas, the text cut at `cuts`."""
    shaper = ChatStreamShaper(think, tools)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(text))), len(text)]
    deltas: list[dict[str, Any]] = []
    for start, end in itertools.pairwise(bounds):
        deltas += shaper.feed(text[start:end])
    rest, made = shaper.finish()
    deltas += rest
    message: dict[str, Any] = {"content": "", "reasoning_content": "", "tool_calls": [], "made": made}
    for delta in deltas:
        assert len(delta) == 1, delta  # one kind of thing per delta
        for key, value in delta.items():
            message[key] += value
    return message


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(HERMES_ANSWER)), max_size=12))
def test_streamed_hermes_calls_match_the_whole_answer_for_any_split(cuts: list[int]) -> None:
    tools = ToolMode("auto", HermesParser())
    streamed = _streamed(HERMES_ANSWER, cuts, None, tools)
    whole, made = shape_message(HERMES_ANSWER, None, tools)
    assert streamed["made"] and made
    assert streamed["content"] == whole["content"] == "Let me check."
    assert "<tool_call" not in streamed["content"]  # the marker is never sent as text
    assert [c["function"] for c in streamed["tool_calls"]] == [c["function"] for c in whole["tool_calls"]]
    assert [c["index"] for c in streamed["tool_calls"]] == [0, 1]


THINKING_ANSWER = "<think>\nThe user wants a city. </thin is not the end.\n</think>\n\nParis <tool ok."


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(THINKING_ANSWER)), max_size=12))
def test_streamed_reasoning_matches_the_whole_answer_for_any_split(cuts: list[int]) -> None:
    think, tools = ThinkTags(), ToolMode("auto", HermesParser())
    streamed = _streamed(THINKING_ANSWER, cuts, think, tools)
    whole, _ = shape_message(THINKING_ANSWER, think, tools)
    assert streamed["reasoning_content"].strip() == whole["reasoning_content"]
    assert whole["reasoning_content"] == "The user wants a city. </thin is not the end."
    assert streamed["content"] == whole["content"] == "Paris <tool ok."
    assert not streamed["made"]


def test_forced_calls_are_sent_only_as_tool_calls() -> None:
    answer = '[{"name": "get_weather", "parameters": {"city": "Rome"}}]'
    streamed = _streamed(answer, [5, 17, 30], None, ToolMode("required"))
    assert streamed["content"] == "" and streamed["made"]
    assert streamed["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    named, made = shape_message('{"city": "Rome"}', None, ToolMode("named", function="get_weather"))
    assert made and named["content"] is None and named["tool_calls"][0]["function"]["name"] == "get_weather"
    assert ToolMode("named", function="f").finish_reason("stop", True) == "stop"  # as OpenAI
    assert ToolMode("required").finish_reason("stop", True) == "tool_calls"
    assert ToolMode("required").finish_reason("length", False) == "length"


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields
    )


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_tool_choice_rules() -> None:
    assert _chat().effective_tool_choice == "none"
    assert _chat(tools=[WEATHER_TOOL]).effective_tool_choice == "auto"
    with pytest.raises(ValueError, match="not in tools"):
        _chat(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "other"}})
    with pytest.raises(ValueError, match="required needs tools"):
        _chat(tool_choice="required")
    with pytest.raises(ValueError, match="distinct"):
        _chat(tools=[WEATHER_TOOL, WEATHER_TOOL])
    with pytest.raises(ValueError, match="tool_call_id"):
        _chat(messages=[{"role": "tool", "content": "20 C"}])


def test_auto_tool_choice_without_a_known_syntax_is_a_clear_400() -> None:
    serving = OpenAIServing.__new__(OpenAIServing)
    serving.parsers = ChatParsers()
    with pytest.raises(BadRequest, match="--tool-call-parser"):
        serving.tool_mode(_chat(tools=[WEATHER_TOOL]))
    assert serving.tool_mode(_chat(tools=[WEATHER_TOOL], tool_choice="required")) is not None
    assert serving.tool_mode(_chat(tools=[WEATHER_TOOL], tool_choice="none")) is None
