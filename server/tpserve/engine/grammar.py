"""Structured outputs on rank 0 with xgrammar: compile off the step loop, mask logits, follow tokens.

A request's `SamplingParams.structured` names what its output must be (a JSON schema, any JSON
object, a regex, one of some strings, or an EBNF grammar). Rank 0 compiles it in a worker thread
(cached by spec, xgrammar's compiler caches too), so a slow compile never delays other requests'
steps; the request joins the scheduler once compiled, and an invalid spec is refused with
xgrammar's message. Each step, every constrained row's matcher writes its allowed tokens into a
bitmask that xgrammar applies to the logits before sampling; the sampled token then advances the
matcher, and a grammar that has reached its end stops the request. JSON is compiled without free
whitespace, so even a model that likes whitespace keeps making progress.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from .sampling import StructuredOutput


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def accept(self, token: int) -> bool:
        """Advance by `token`; True once the grammar has ended (the request stops)."""
        self.matcher.accept_token(token)
        return bool(self.matcher.is_terminated())


class GrammarBackend:
    def __init__(self, load_tokenizer: Callable[[], Any], vocab_size: int) -> None:
        self._load_tokenizer = load_tokenizer
        self.vocab_size = vocab_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")
        self._compiler: Any = None
        self._compiled: dict[StructuredOutput, Any] = {}

    def compile(self, structured: StructuredOutput) -> Future[GrammarState]:
        return self._executor.submit(self._state_for, structured)

    def _state_for(self, structured: StructuredOutput) -> GrammarState:
        import xgrammar

        compiled = self._compiled.get(structured)
        if compiled is None:
            compiled = self._compile(structured)
            self._compiled[structured] = compiled
        return GrammarState(xgrammar.GrammarMatcher(compiled))

    def _compile(self, structured: StructuredOutput) -> Any:
        import xgrammar

        if self._compiler is None:
            info = xgrammar.TokenizerInfo.from_huggingface(self._load_tokenizer(), vocab_size=self.vocab_size)
            self._compiler = xgrammar.GrammarCompiler(info)
        compiler = self._compiler
        kind, spec = structured.kind, structured.spec
        if kind == "json_schema":
            return compiler.compile_json_schema(spec, any_whitespace=False)
        if kind == "json_object":
            return compiler.compile_builtin_json_grammar()
        if kind == "regex":
            return compiler.compile_regex(spec)
        if kind == "choice":
            choices = json.loads(spec)
            return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in choices))
        return compiler.compile_grammar(spec)

    def mask(self, logits: torch.Tensor, states: list[GrammarState | None]) -> torch.Tensor:
        """`logits` (float32, modified in place) with every constrained row's disallowed tokens at -inf."""
        import xgrammar

        rows = [i for i, state in enumerate(states) if state is not None]
        if not rows:
            return logits
        bitmask = xgrammar.allocate_token_bitmask(len(states), logits.shape[-1])
        for i in rows:
            state = states[i]
            assert state is not None
            state.matcher.fill_next_token_bitmask(bitmask, i)
        xgrammar.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
        return logits

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
