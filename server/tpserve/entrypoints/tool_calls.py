"""Tool calls: the model's tool-call syntax parsed into OpenAI `tool_calls`, and forced choices.

With `tool_choice: "auto"` the model writes calls in its chat template's own syntax, which a parser
for that family reads back (`--tool-call-parser`, vLLM's names, or detected from the template):
  hermes       Qwen2.5/Qwen3 and other hermes-style templates:
               <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one block per call;
  llama3_json  Llama 3.1-3.3 JSON tool calling: {"name": ..., "parameters": {...}}, optionally after
               <|python_tag|>, several separated by ";".
With `tool_choice: "required"` or a named function the answer is constrained by a JSON schema
(the structured-output grammar), as vLLM does, so it is a call whatever the model: `required` is
a JSON array of {"name", "parameters"} objects, one of the tools each; a named function's answer
is that function's arguments object.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

TOOL_CALL_PARSERS = ("hermes", "llama3_json")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as the OpenAI API returns it

    def as_openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return call if index is None else {"index": index} | call


class ToolCallParser(Protocol):
    def may_start_call(self, text: str) -> int | None:
        """Where in `text` a tool call starts or may be starting (a marker's prefix at the end), or None."""
        ...

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """The text besides the calls, and the calls; no calls if the syntax does not parse."""
        ...


def _call_from_json(value: Any, arguments_key: str) -> ToolCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(arguments_key, value.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def partial_marker_start(text: str, marker: str) -> int | None:
    """Index of the longest suffix of `text` that is a proper prefix of `marker`, if any."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return len(text) - length
    return None


class HermesParser:
    START, END = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def may_start_call(self, text: str) -> int | None:
        found = text.find(self.START)
        return found if found >= 0 else partial_marker_start(text, self.START)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = text.find(self.START)
        if start < 0:
            return text, []
        calls = []
        for block in self._BLOCK.findall(text[start:]):
            try:
                call = _call_from_json(json.loads(block), "arguments")
            except json.JSONDecodeError:
                call = None
            if call is None:
                return text, []  # a malformed call: the text is returned as it is
            calls.append(call)
        return text[:start].rstrip(), calls


class Llama3JsonParser:
    PYTHON_TAG = "<|python_tag|>"

    def may_start_call(self, text: str) -> int | None:
        stripped = text.lstrip()
        if not stripped:
            return None
        offset = len(text) - len(stripped)
        if stripped.startswith(("{", self.PYTHON_TAG)) or self.PYTHON_TAG.startswith(stripped):
            return offset
        return None  # Llama writes a call as its whole answer: anything else is text

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        body = text.strip().removeprefix(self.PYTHON_TAG).strip()
        if not body.startswith("{"):
            return text, []
        decoder = json.JSONDecoder()
        calls, position = [], 0
        while position < len(body):
            try:
                value, end = decoder.raw_decode(body, position)
            except json.JSONDecodeError:
                return text, []
            call = _call_from_json(value, "parameters")
            if call is None:
                return text, []
            calls.append(call)
            position = end
            while position < len(body) and body[position] in " \t\r\n;":
                position += 1
        return "", calls


def tool_call_parser(name: str) -> ToolCallParser:
    if name == "hermes":
        return HermesParser()
    if name == "llama3_json":
        return Llama3JsonParser()
    raise ValueError(f"unknown tool-call parser {name!r} (known: {', '.join(TOOL_CALL_PARSERS)})")


def detect_tool_call_parser(chat_template: str | None) -> str | None:
    """The parser a chat template's tool-call syntax needs, if the template has one we know."""
    if not chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if "<|python_tag|>" in chat_template or "ipython" in chat_template:
        return "llama3_json"
    return None


# -- forced choices ------------------------------------------------------------------------------
def required_calls_schema(tools: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """JSON schema of an answer that is one or more calls of the given tools."""
    one_call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [tool["name"]]},
                    "parameters": tool.get("parameters") or {"type": "object"},
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for tool in tools
        ]
    }
    schema: dict[str, Any] = {"type": "array", "items": one_call, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def named_call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("parameters") or {"type": "object"}


def parse_required_calls(text: str) -> list[ToolCall]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(values, list):
        return []
    calls = [_call_from_json(v, "parameters") for v in values]
    return [c for c in calls if c is not None] if all(calls) else []


def parse_named_call(name: str, text: str) -> list[ToolCall]:
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError:
        return []
    return [ToolCall(name, json.dumps(arguments, ensure_ascii=False))] if isinstance(arguments, dict) else []
