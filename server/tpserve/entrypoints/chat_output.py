"""A chat answer's text shaped into OpenAI's message: reasoning, content and tool calls.

`shape_message` does it for a whole answer; `ChatStreamShaper` for a stream, delta by delta. While
a stream might be starting a tool call (a `<tool_call>` marker, or a prefix of it at the end of the
text so far) that text is held back; the calls are sent whole, in one delta, when the answer ends
(the `openai` client and vLLM's accept arguments in one piece as well as in fragments). A stream's
reasoning is recognised when the answer begins with `<think>`, as vLLM's streaming Qwen3 parser does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .reasoning import ThinkTags
from .tool_calls import ToolCall, ToolCallParser, parse_named_call, parse_required_calls, partial_marker_start


@dataclass(frozen=True)
class ToolMode:
    """How this request's answer may call tools: parsed from the model's syntax (auto) or forced."""

    choice: str  # "auto", "required" or "named"
    parser: ToolCallParser | None = None  # auto only
    function: str | None = None  # named only
    parallel: bool = True

    def calls(self, content: str) -> tuple[str, list[ToolCall]]:
        """(content left, calls) of a whole answer's content."""
        if self.choice == "required":
            calls = parse_required_calls(content)
        elif self.choice == "named":
            assert self.function is not None
            calls = parse_named_call(self.function, content)
        else:
            assert self.parser is not None
            content, calls = self.parser.parse(content)
            if calls and not self.parallel:
                calls = calls[:1]
            return content, calls
        return ("", calls) if calls else (content, [])

    def finish_reason(self, reason: str | None, made_calls: bool) -> str | None:
        # OpenAI: "tool_calls" when the model chose to call; a forced named function ends "stop".
        if made_calls and reason == "stop" and self.choice != "named":
            return "tool_calls"
        return reason


def shape_message(text: str, think: ThinkTags | None, tools: ToolMode | None) -> tuple[dict[str, Any], bool]:
    """The assistant message of a whole answer, and whether it calls tools."""
    reasoning, content = think.split(text) if think is not None else (None, text)
    message: dict[str, Any] = {"role": "assistant"}
    calls: list[ToolCall] = []
    if tools is not None:
        content, calls = tools.calls(content)
    message["content"] = content if content or not calls else None
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [call.as_openai() for call in calls]
    return message, bool(calls)


@dataclass
class ChatStreamShaper:
    think: ThinkTags | None
    tools: ToolMode | None
    _pending: str = ""  # text not yet assigned to reasoning or content
    _thinking: bool | None = None  # None: not decided yet
    _content: str = ""  # every content character so far
    _content_sent: int = 0
    _after_reasoning: bool = False  # the whitespace between </think> and the answer is dropped

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas ({"reasoning_content": ...} or {"content": ...}) that can be sent now."""
        deltas: list[dict[str, Any]] = []
        if self.think is not None and self._thinking is not False:
            self._pending += text
            text = self._reasoning_step(deltas)
        if self._after_reasoning:
            text = text.lstrip()
            self._after_reasoning = not text
        self._content += text
        self._send_content(deltas, final=False)
        return deltas

    def finish(self) -> tuple[list[dict[str, Any]], bool]:
        """The deltas left when the answer ends, and whether it called tools."""
        deltas: list[dict[str, Any]] = []
        if self._pending:  # cut off while thinking (or too short to tell): it is what it began as
            if self._thinking:
                deltas.append({"reasoning_content": self._pending})
            else:
                self._content += self._pending
            self._pending = ""
        if self.tools is not None:
            content, calls = self.tools.calls(self._content)
            if calls:
                if len(content) > self._content_sent:
                    deltas.append({"content": content[self._content_sent :]})
                deltas.append({"tool_calls": [call.as_openai(i) for i, call in enumerate(calls)]})
                return deltas, True
        self._send_content(deltas, final=True)
        return deltas, False

    def _reasoning_step(self, deltas: list[dict[str, Any]]) -> str:
        """Send what is known to be reasoning; returns text that is known to be content."""
        assert self.think is not None
        start, end = self.think.start, self.think.end
        if self._thinking is None:
            stripped = self._pending.lstrip()
            if start.startswith(stripped):
                return ""  # still could be "<think>"
            self._thinking = stripped.startswith(start)
            if not self._thinking:
                text, self._pending = self._pending, ""
                return text
            self._pending = stripped.removeprefix(start).lstrip()
        found = self._pending.find(end)
        if found >= 0:
            reasoning, rest = self._pending[:found], self._pending[found + len(end) :]
            if reasoning.strip():
                deltas.append({"reasoning_content": reasoning.rstrip()})
            self._pending, self._thinking, self._after_reasoning = "", False, True
            return rest
        held = partial_marker_start(self._pending, end)
        keep = len(self._pending) if held is None else held
        if keep:
            deltas.append({"reasoning_content": self._pending[:keep]})
            self._pending = self._pending[keep:]
        return ""

    def _send_content(self, deltas: list[dict[str, Any]], final: bool) -> None:
        limit = len(self._content)
        if not final and self.tools is not None:
            if self.tools.choice != "auto":
                return  # a forced call is JSON from the first token: it is sent as tool_calls
            assert self.tools.parser is not None
            start = self.tools.parser.may_start_call(self._content)
            if start is not None:
                limit = start
            # Whitespace before a call is not part of the content: hold it until text follows.
            limit = max(self._content_sent, len(self._content[:limit].rstrip()))
        if limit > self._content_sent:
            deltas.append({"content": self._content[self._content_sent : limit]})
            self._content_sent = limit
