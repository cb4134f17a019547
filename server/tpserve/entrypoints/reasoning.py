"""Reasoning parsers: a thinking model's `<think>…</think>` returned as `reasoning_content`.

`--reasoning-parser qwen3` (vLLM's and SGLang's name; also deepseek_r1, the same syntax): the text
up to `</think>` is the reasoning (a leading `<think>` dropped: Qwen3 writes it itself, later
templates put it in the prompt), the rest is the answer. Without `</think>`, an answer that began
with `<think>` is all reasoning (cut off while thinking); any other is all content (thinking off,
e.g. `chat_template_kwargs: {"enable_thinking": false}`).
"""

from __future__ import annotations

from dataclasses import dataclass

REASONING_PARSERS = ("qwen3", "deepseek_r1")


@dataclass(frozen=True)
class ThinkTags:
    start: str = "<think>"
    end: str = "</think>"

    def split(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None, content) of a whole answer."""
        stripped = text.lstrip()
        end = text.find(self.end)
        if end < 0:
            if stripped.startswith(self.start):
                return stripped.removeprefix(self.start).strip(), ""
            return None, text
        reasoning = text[:end].strip().removeprefix(self.start).strip()
        return reasoning, text[end + len(self.end) :].lstrip()


def reasoning_tags(name: str) -> ThinkTags:
    if name in REASONING_PARSERS:
        return ThinkTags()
    raise ValueError(f"unknown reasoning parser {name!r} (known: {', '.join(REASONING_PARSERS)})")
