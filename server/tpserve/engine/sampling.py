"""Per-request sampling parameters and the batched sampler that runs on rank 0."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

STRUCTURED_KINDS = ("json_schema", "json_object", "regex", "choice", "ebnf")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a seed travels to the ranks as an int64


@dataclass(frozen=True)
class StructuredOutput:
    """What a constrained output must be (engine/grammar.py compiles it)."""

    kind: str  # one of STRUCTURED_KINDS
    spec: str = ""  # the schema (JSON text), regex, EBNF grammar, or a JSON list of choices

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise ValueError(f"structured output kind {self.kind!r}: expected one of {', '.join(STRUCTURED_KINDS)}")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) disables top-k
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; N: chosen token's logprob and the top N
    prompt_logprobs: int | None = None  # the same for every prompt token after the first
    # Logits adjustments (logits_processors.py), with vLLM's and SGLang's meanings.
    presence_penalty: float = 0.0  # minus this for every token already generated
    frequency_penalty: float = 0.0  # minus this times how often it was generated
    repetition_penalty: float = 1.0  # logits of prompt and generated tokens: > 0 divided, < 0 multiplied
    min_tokens: int = 0  # eos and stop tokens are impossible before this many tokens
    min_p: float = 0.0  # tokens less likely than min_p times the most likely one are dropped
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    structured: StructuredOutput | None = None  # the output follows this grammar

    def __post_init__(self) -> None:
        # Tuples keep the dataclass hashable and picklable whatever the caller passed.
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in self.logit_bias))
        self.validate()

    def validate(self) -> None:
        if self.seed is not None and not INT64_MIN <= self.seed <= INT64_MAX:
            raise ValueError(f"seed must be a 64-bit signed integer, got {self.seed}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 (disabled) or >= 0, got {self.top_k}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError(f"prompt_logprobs must be >= 0, got {self.prompt_logprobs}")
        if not -2 <= self.presence_penalty <= 2 or not -2 <= self.frequency_penalty <= 2:
            raise ValueError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")

    @functools.cached_property  # read per row per step: computed once
    def penalizes_repeats(self) -> bool:
        """Whether its logits depend on the tokens generated so far (not only on their number)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @functools.cached_property  # read per row per step: computed once
    def needs_previous_token(self) -> bool:
        """Its next step cannot be planned before its newest token is on the host (no overlap)."""
        return self.penalizes_repeats or self.structured is not None

    @functools.cached_property  # read per row per step: computed once
    def adjusts_logits(self) -> bool:
        return self.penalizes_repeats or self.min_tokens > 0 or bool(self.logit_bias)

    @functools.cached_property  # read per row per step: computed once
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True)
class TokenLogprobs:
    token_logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class SampleResult:
    token_id: int
    logprobs: TokenLogprobs | None


class PendingSamples:
    """A step's sampled tokens: on the device at once, on the host once `results` is called.

    The host copies are queued behind the sampling kernels without waiting for them, so the
    next step can be planned and launched while this one still runs (overlap scheduling).
    """

    def __init__(
        self, tokens: torch.Tensor, logprob_rows: list[int], top_n: list[int], log_probs: torch.Tensor | None
    ) -> None:
        self.tokens = tokens  # [rows] on the device
        self._logprob_rows = logprob_rows
        self._top_n = top_n
        device = tokens.device
        self._host: list[torch.Tensor] = [tokens]
        if log_probs is not None:
            chosen = log_probs.gather(1, tokens[logprob_rows].unsqueeze(1)).squeeze(1)
            top_values, top_ids = log_probs.topk(max(1, *top_n), dim=-1)
            self._host += [chosen, top_values, top_ids]
        if device.type == "cuda":
            self._host = [t.to("cpu", non_blocking=True) for t in self._host]
            self._ready: torch.cuda.Event | None = torch.cuda.Event()
            self._ready.record()
        else:
            self._ready = None

    def results(self) -> list[SampleResult]:
        if self._ready is not None:
            self._ready.synchronize()
        token_list: list[int] = self._host[0].tolist()
        results = [SampleResult(t, None) for t in token_list]
        if self._logprob_rows:
            chosen, top_values, top_ids = (t.tolist() for t in self._host[1:])
            for j, (i, n) in enumerate(zip(self._logprob_rows, self._top_n)):
                top = list(zip(top_ids[j][:n], top_values[j][:n]))
                results[i] = SampleResult(token_list[i], TokenLogprobs(chosen[j], top))
        return results


class PendingPromptLogprobs:
    """Log-probabilities of known next tokens (prompt tokens) and their top alternatives.

    Computed on the device in slices of rows (a chunk's float32 log-softmax over the vocabulary
    would be gigabytes at once) and copied back without waiting, like PendingSamples.
    """

    ROWS_PER_SLICE = 256

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor, top_n: int) -> None:
        chosen, values, ids = [], [], []
        for start in range(0, logits.shape[0], self.ROWS_PER_SLICE):
            rows = slice(start, start + self.ROWS_PER_SLICE)
            log_probs = torch.log_softmax(logits[rows].float(), dim=-1)
            chosen.append(log_probs.gather(1, targets[rows].unsqueeze(1)).squeeze(1))
            if top_n:
                top_values, top_ids = log_probs.topk(top_n, dim=-1)
                values.append(top_values)
                ids.append(top_ids)
        self.top_n = top_n
        self._host = [torch.cat(chosen)] + ([torch.cat(values), torch.cat(ids)] if top_n else [])
        self._ready: torch.cuda.Event | None = None
        if logits.device.type == "cuda":
            self._host = [t.to("cpu", non_blocking=True) for t in self._host]
            self._ready = torch.cuda.Event()
            self._ready.record()

    def results(self) -> list[TokenLogprobs]:
        if self._ready is not None:
            self._ready.synchronize()
        chosen: list[float] = self._host[0].tolist()
        if not self.top_n:
            return [TokenLogprobs(c) for c in chosen]
        values, ids = self._host[1].tolist(), self._host[2].tolist()
        return [TokenLogprobs(c, list(zip(i, v))) for c, i, v in zip(chosen, ids, values)]


class Sampler:
    """Samples one token per row, each row with its own parameters and (optional) seeded RNG."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.shared_rng = torch.Generator(device=device).manual_seed(seed)
        self._flashinfer = _flashinfer_sampling() if device.type == "cuda" else None

    def new_request_rng(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.inference_mode()
    def sample(
        self, logits: torch.Tensor, params: list[SamplingParams], rngs: list[torch.Generator | None]
    ) -> PendingSamples:
        """Sample every row on the device; nothing here waits for the GPU."""
        tokens = logits.argmax(dim=-1)  # in the logits' own dtype: the same maximum as in float32
        sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
        if sampled_rows:
            rows = torch.tensor(sampled_rows, device=logits.device)
            chosen = self._sample_rows(
                logits[rows].float(), [params[i] for i in sampled_rows], [rngs[i] for i in sampled_rows]
            )
            tokens[rows] = chosen
        logprob_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        log_probs = None
        if logprob_rows:
            rows = torch.tensor(logprob_rows, device=logits.device)
            log_probs = torch.log_softmax(logits[rows].float(), dim=-1)
        return PendingSamples(tokens, logprob_rows, [params[i].logprobs or 0 for i in logprob_rows], log_probs)

    def _sample_rows(
        self, logits: torch.Tensor, params: list[SamplingParams], rngs: list[torch.Generator | None]
    ) -> torch.Tensor:
        device = logits.device
        temperature = torch.tensor([p.temperature for p in params], device=device, dtype=logits.dtype)
        scaled = _drop_below_min_p(logits / temperature.unsqueeze(1), params)
        unseeded = [i for i, g in enumerate(rngs) if g is None]
        if self._flashinfer is None or not unseeded:
            return self._sample_sorted(scaled, params, rngs)
        # flashinfer samples top-k/top-p by rejection, without sorting the vocabulary. A request
        # with its own seed keeps the sorted path: its draws must not depend on its batch row.
        vocab = scaled.shape[-1]
        rows = torch.tensor(unseeded, device=device)
        top_k = torch.tensor([params[i].top_k if params[i].top_k > 0 else vocab for i in unseeded], device=device)
        top_p = torch.tensor([params[i].top_p for i in unseeded], device=device, dtype=torch.float32)
        tokens = torch.empty(len(params), dtype=torch.int64, device=device)
        tokens[rows] = self._flashinfer.top_k_top_p_sampling_from_logits(
            scaled[rows], top_k.to(torch.int32), top_p, generator=self.shared_rng
        ).long()
        seeded = [i for i, g in enumerate(rngs) if g is not None]
        if seeded:
            seeded_rows = torch.tensor(seeded, device=device)
            tokens[seeded_rows] = self._sample_sorted(
                scaled[seeded_rows], [params[i] for i in seeded], [rngs[i] for i in seeded]
            )
        return tokens

    def _sample_sorted(
        self, scaled: torch.Tensor, params: list[SamplingParams], rngs: list[torch.Generator | None]
    ) -> torch.Tensor:
        """Top-k/top-p over the sorted vocabulary (the CPU path, and per-request seeds)."""
        device = scaled.device
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(scaled.shape[-1], device=device).unsqueeze(0)
        top_k = torch.tensor([p.top_k if p.top_k > 0 else scaled.shape[-1] for p in params], device=device)
        drop = rank >= top_k.unsqueeze(1)
        top_p = torch.tensor([p.top_p for p in params], device=device, dtype=scaled.dtype)
        sorted_probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop |= (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = torch.empty_like(scaled).scatter_(1, order, sorted_logits.softmax(dim=-1))
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, and lets a seeded
        # request draw its noise from its own generator, whatever else is in the batch.
        noise = torch.empty_like(probs)
        unseeded = [i for i, g in enumerate(rngs) if g is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=device).exponential_(
                generator=self.shared_rng
            )
        for i, rng in enumerate(rngs):
            if rng is not None:
                noise[i].exponential_(generator=rng)
        return (probs / noise).argmax(dim=-1)


def _drop_below_min_p(scaled: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Min-p: a token less likely than min_p times the row's most likely one cannot be drawn."""
    if not any(p.min_p for p in params):
        return scaled
    min_p = torch.tensor([p.min_p for p in params], device=scaled.device, dtype=scaled.dtype)
    probs = scaled.softmax(dim=-1)
    too_unlikely = probs < min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
    return scaled.masked_fill(too_unlikely, float("-inf"))


def _flashinfer_sampling() -> Any:
    try:
        import flashinfer.sampling
    except ImportError:
        return None
    return flashinfer.sampling
