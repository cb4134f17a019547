"""Token ids to text, incrementally, and stop strings that may span token boundaries."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class IncrementalDetokenizer:
    """Decodes one token at a time in O(1) work per token.

    Decoding a token alone can be wrong (byte-level BPE splits UTF-8 characters across tokens),
    so each step decodes a short window ending at the new token and emits only the text beyond
    the window's already-emitted prefix; an incomplete character is held until it completes.
    Fast tokenizers do this in Rust (tokenizers' DecodeStream: ~1.4 us a token against ~10 us
    for two Python-side decodes, paid on every streamed token); slow ones take the window here.
    """

    def __init__(
        self, tokenizer: Any, skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # Only slow (Python) tokenizers have this option; fast ones join special tokens without spaces.
        self._extra = {} if spaces_between_special_tokens else {"spaces_between_special_tokens": False}
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers only
        self._stream = (DecodeStream(skip_special_tokens=skip_special_tokens), backend) if backend else None
        self._emitted = 0  # characters returned so far, on the DecodeStream path

    def _decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False, **self._extra
        )
        return text

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self._stream is not None:
            stream, backend = self._stream
            piece: str | None = stream.step(backend, token_id)
            if piece is None:
                return ""  # a multi-byte character is not complete yet
            self._emitted += len(piece)
            return piece
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if full.endswith("\ufffd"):
            return ""  # a multi-byte character is not complete yet
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        return full[len(prefix) :]

    def flush(self) -> str:
        """Text still held back at the end (an incomplete character decodes as U+FFFD)."""
        if self._stream is not None:  # once per request: the whole text, less what was emitted
            rest = self._decode(self.ids)[self._emitted :]
            self._emitted += len(rest)
            return rest
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.ids)
        return full[len(prefix) :]


class StopStringMatcher:
    """Accumulates output text; finds stop strings and holds back text that might start one."""

    def __init__(self, stops: list[str], include_stop: bool = False) -> None:
        self.stops = stops
        self.include_stop = include_stop  # the matched stop string stays at the end of the text
        self._longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self._emitted = 0

    def feed(self, new_text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was reached)."""
        search_from = max(0, len(self.text) - self._longest + 1)
        self.text += new_text
        hits = [(i, len(s)) for i, s in ((self.text.find(s, search_from), s) for s in self.stops) if i >= 0]
        if hits:
            start, length = min(hits)
            self.text = self.text[: start + (length if self.include_stop else 0)]
            return self._emit(len(self.text)), True
        return self._emit(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        for size in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0

    def _emit(self, upto: int) -> str:
        delta = self.text[self._emitted : upto]
        self._emitted = max(self._emitted, upto)
        return delta
