"""Incremental detokenization and stop strings, on the tiny checkpoint's byte-level BPE tokenizer."""

from __future__ import annotations

import random
from typing import Any

import pytest
from transformers import AutoTokenizer

from tpserve.entrypoints.detokenizer import IncrementalDetokenizer, StopStringMatcher


class PythonSideDecode:
    """The tokenizer without its Rust backend, as a slow tokenizer is: the window path decodes."""

    def __init__(self, tokenizer: Any) -> None:
        self.decode = tokenizer.decode


@pytest.mark.parametrize("path", ["decode-stream", "window"])
def test_incremental_text_equals_full_decode(tiny_checkpoint, path: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint("llama")))
    assert tokenizer.backend_tokenizer is not None
    texts = ["Grüße aus Köln — 東京 🚀 tensor parallel!", "plain ascii words here", "ünïcödé " * 5]
    rng = random.Random(0)
    sequences = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    sequences.append([rng.randrange(len(tokenizer)) for _ in range(60)])  # arbitrary bytes, broken UTF-8 too
    for ids in sequences:
        detokenizer = IncrementalDetokenizer(tokenizer if path == "decode-stream" else PythonSideDecode(tokenizer))
        pieces = [detokenizer.add(t) for t in ids]
        text = "".join(pieces) + detokenizer.flush()
        assert text == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_stop_string_split_across_pieces_is_held_back_then_cut() -> None:
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("hello S") == ("hello ", False)  # "S" might begin the stop string
    assert matcher.feed("T") == ("", False)
    assert matcher.feed("OP and more") == ("", True)
    assert matcher.text == "hello "


def test_false_alarm_is_released_and_flush_returns_the_rest() -> None:
    matcher = StopStringMatcher(["</end>", "\n\n"])
    assert matcher.feed("a </e") == ("a ", False)
    assert matcher.feed("x") == ("</ex", False)
    assert matcher.feed("\n") == ("", False)
    assert matcher.flush() == "\n"
    assert matcher.text == "a </ex\n"
