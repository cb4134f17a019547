"""Scheduler decisions without a model: admission, chunking, pages, preemption, stopping."""

from __future__ import annotations

import pytest

from tpserve.engine.sampling import SampleResult, SamplingParams
from tpserve.engine.scheduler import FinishReason, RequestError, Scheduler, SchedulerLimits, Sequence

EOS = 2


def make_scheduler(num_pages: int = 64, page_size: int = 4, max_prefill: int = 8, max_running: int = 8) -> Scheduler:
    return Scheduler(
        SchedulerLimits(page_size, num_pages, max_running, max_prefill, max_model_len=64, eos_token_ids=(EOS,))
    )


def seq(request_id: str, prompt_len: int, **params: object) -> Sequence:
    return Sequence(request_id, list(range(10, 10 + prompt_len)), prompt_len, SamplingParams(**params))  # type: ignore[arg-type]


def run_step(scheduler: Scheduler, token: int = 7) -> list:
    planned = scheduler.schedule()
    assert planned is not None
    batch, seqs = planned
    samples = [SampleResult(token, None) for wants in batch.sample if wants]
    return scheduler.update(seqs, batch, samples)


def test_long_prompt_is_prefilled_in_chunks_within_budget() -> None:
    scheduler = make_scheduler(max_prefill=8)
    scheduler.add(seq("a", 20, max_tokens=2))
    budgets = []
    while scheduler.has_work:
        batch, _ = scheduler.schedule()  # type: ignore[misc]
        budgets.append(batch.query_lens)
        scheduler.update(_, batch, [SampleResult(7, None) for w in batch.sample if w])
    assert budgets == [[8], [8], [4], [1]]
    assert scheduler.pages.num_used == 0


def test_decodes_share_a_step_with_a_prefill_chunk() -> None:
    scheduler = make_scheduler(max_prefill=8)
    scheduler.add(seq("a", 3, max_tokens=10))
    run_step(scheduler)
    scheduler.add(seq("b", 12, max_tokens=10))
    batch, seqs = scheduler.schedule()  # type: ignore[misc]
    assert [s.request_id for s in seqs] == ["a", "b"]
    assert batch.query_lens == [1, 8]
    assert batch.sample == [True, False]


def test_max_running_caps_admission() -> None:
    scheduler = make_scheduler(max_running=2)
    for name in "abc":
        scheduler.add(seq(name, 2, max_tokens=5))
    _, seqs = scheduler.schedule()  # type: ignore[misc]
    assert [s.request_id for s in seqs] == ["a", "b"]
    assert len(scheduler.waiting) == 1


def test_preemption_frees_pages_and_requeues_the_newest() -> None:
    scheduler = make_scheduler(num_pages=4, page_size=4, max_prefill=64)
    scheduler.add(seq("a", 8, max_tokens=20))
    scheduler.add(seq("b", 8, max_tokens=20))
    run_step(scheduler)  # both prefilled: 2 pages each, cache full
    assert scheduler.pages.num_free == 0
    run_step(scheduler)  # position 8 needs a third page for a: b is preempted
    assert [s.request_id for s in scheduler.running] == ["a"]
    assert scheduler.waiting[0].request_id == "b" and scheduler.waiting[0].num_cached == 0
    assert len(scheduler.waiting[0].token_ids) == 9, "b keeps its generated token and recomputes it"


def test_eos_stops_unless_ignored() -> None:
    scheduler = make_scheduler()
    scheduler.add(seq("stops", 3, max_tokens=10))
    scheduler.add(seq("ignores", 3, max_tokens=10, ignore_eos=True))
    outputs = run_step(scheduler, token=EOS)
    reasons = {o.request_id: o.finish_reason for o in outputs}
    assert reasons == {"stops": FinishReason.STOP, "ignores": None}
    assert [s.request_id for s in scheduler.running] == ["ignores"]


def test_abort_returns_pages() -> None:
    scheduler = make_scheduler()
    scheduler.add(seq("a", 9, max_tokens=10))
    run_step(scheduler)
    assert scheduler.pages.num_used > 0
    out = scheduler.abort("a")
    assert out is not None and out.finish_reason == FinishReason.ABORT
    assert scheduler.pages.num_used == 0 and not scheduler.has_work


@pytest.mark.parametrize(
    ("prompt_len", "message"),
    [(0, "empty"), (64, "context length")],
)
def test_bad_prompts_are_refused(prompt_len: int, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        make_scheduler().add(seq("x", prompt_len))


def test_prompt_larger_than_the_whole_cache_is_refused() -> None:
    with pytest.raises(RequestError, match="KV cache holds 8"):
        make_scheduler(num_pages=2, page_size=4).add(seq("x", 9))


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_k", -2), ("logprobs", -1)],
)
def test_sampling_params_name_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]
