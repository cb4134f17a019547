"""Scheduler decisions without a model: admission, chunking, pages, preemption, stopping."""

from __future__ import annotations

import pytest

from tpserve.engine import scheduler as scheduler_module
from tpserve.engine.sampling import SampleResult, SamplingParams
from tpserve.engine.scheduler import FinishReason, RequestError, Scheduler, SchedulerLimits, Sequence

from .scheduler_invariants import check_idle, check_invariants, run_step

EOS = 2


def make_scheduler(
    num_pages: int = 64,
    page_size: int = 4,
    max_prefill: int = 8,
    max_running: int = 8,
    radix: bool = True,
    prefill_streak: int = 1,
) -> Scheduler:
    return Scheduler(
        SchedulerLimits(
            page_size,
            num_pages,
            max_running,
            max_prefill,
            max_model_len=64,
            eos_token_ids=(EOS,),
            radix_cache=radix,
            max_prefill_streak=prefill_streak,
        )
    )


def seq(request_id: str, prompt_len: int, first_token: int = 10, **params: object) -> Sequence:
    prompt = list(range(first_token, first_token + prompt_len))
    return Sequence(request_id, prompt, prompt_len, SamplingParams(**params))  # type: ignore[arg-type]


def test_long_prompt_is_prefilled_in_chunks_within_budget() -> None:
    scheduler = make_scheduler(max_prefill=8)
    scheduler.add(seq("a", 20, max_tokens=2))
    budgets = []
    while scheduler.has_work:
        step = scheduler.schedule()
        assert step is not None
        budgets.append(list(step.batch.query_lens))
        scheduler.update(step, [SampleResult(7, None)] * len(step.sampled))
    assert budgets == [[8], [8], [4], [1]]
    check_idle(scheduler)


def plans_while_b_prefills(scheduler: Scheduler, steps: int) -> list[tuple[list[str], list[int]]]:
    """Stream "a" decodes while "b" (20 prompt tokens) arrives: each step's rows and token counts."""
    scheduler.add(seq("a", 3, max_tokens=10))
    run_step(scheduler)
    scheduler.add(seq("b", 20, max_tokens=10))
    plans = []
    for _ in range(steps):
        step = scheduler.schedule()
        assert step is not None
        plans.append(([s.request_id for s in step.seqs], list(step.batch.query_lens)))
        scheduler.update(step, [SampleResult(7, None)] * len(step.sampled))
    return plans


def test_prefill_and_decode_steps_alternate_while_both_have_work() -> None:
    """Decode steps stay decode-only (they fit a CUDA graph); a stream waits at most one chunk."""
    assert plans_while_b_prefills(make_scheduler(max_prefill=8), 6) == [
        (["a"], [1]),  # the previous step prefilled "a"
        (["b"], [8]),
        (["a"], [1]),
        (["b"], [8]),
        (["a"], [1]),
        (["b"], [4]),
    ]


def test_a_prefill_streak_lets_arrivals_prefill_before_streams_go_on() -> None:
    """With --max-prefill-streak 2 a running stream waits up to two prefill chunks between tokens."""
    assert plans_while_b_prefills(make_scheduler(max_prefill=8, prefill_streak=2), 5) == [
        (["b"], [8]),  # "a"'s own prefill step was the first of this streak
        (["a"], [1]),
        (["b"], [8]),
        (["b"], [4]),
        (["a", "b"], [1, 1]),
    ]


def test_max_running_caps_admission() -> None:
    scheduler = make_scheduler(max_running=2)
    for name in "abc":
        scheduler.add(seq(name, 2, max_tokens=5))
    step = scheduler.schedule()
    assert step is not None and [s.request_id for s in step.seqs] == ["a", "b"]
    assert len(scheduler.waiting) == 1


@pytest.mark.parametrize("radix", [True, False], ids=["radix", "no-radix"])
def test_preemption_takes_the_least_progress_and_requeues_it_first(radix: bool, monkeypatch) -> None:
    # An estimate of decode growth that turns out too low (here: none) is what leads to preemption.
    monkeypatch.setattr(scheduler_module, "MIN_NEW_TOKEN_RATIO", 0.0)
    scheduler = make_scheduler(num_pages=4, page_size=4, max_prefill=64, radix=radix)
    scheduler.new_token_ratio = 0.0
    scheduler.add(seq("a", 6, max_tokens=20))
    run_step(scheduler)  # a: 6 prompt tokens + 1 generated, 2 pages
    scheduler.add(seq("b", 7, first_token=100, max_tokens=20))  # nothing in common with a
    run_step(scheduler)  # a decodes its 7th token (prefill and decode steps alternate)
    run_step(scheduler)  # b prefilled: cache full
    assert scheduler.pages_in_use == 4 and [s.num_generated for s in scheduler.running] == [2, 1]
    run_step(scheduler)  # both decode into the last slots of their second pages
    assert scheduler.num_preemptions == 0
    run_step(scheduler)  # a needs a third page: b, with less progress, is preempted
    assert [s.request_id for s in scheduler.running] == ["a"]
    assert scheduler.waiting[0].request_id == "b" and scheduler.waiting[0].num_cached == 0
    assert len(scheduler.waiting[0].token_ids) == 9, "b keeps its generated tokens and recomputes them"
    assert scheduler.num_preemptions == 1
    check_invariants(scheduler)
    while scheduler.has_work:
        run_step(scheduler)
        check_invariants(scheduler)
    check_idle(scheduler)


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
    check_idle(scheduler)


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


def test_admission_keeps_room_for_the_decode_growth_of_running_requests() -> None:
    scheduler = make_scheduler(num_pages=8, page_size=4, max_prefill=64)
    scheduler.add(seq("a", 4, max_tokens=20))
    run_step(scheduler)
    scheduler.add(seq("b", 4, max_tokens=20))
    run_step(scheduler)
    # a is expected to take 0.7 x 19 more tokens (5 pages with its prompt): b must wait.
    assert [s.request_id for s in scheduler.running] == ["a"] and scheduler.waiting[0].request_id == "b"
    while scheduler.has_work:
        run_step(scheduler)
        check_invariants(scheduler)
    assert scheduler.num_preemptions == 0
    check_idle(scheduler)


def test_a_request_the_whole_cache_cannot_grow_finishes_with_length() -> None:
    """The livelock case: four requests promising more tokens than the cache holds, one after another."""
    scheduler = make_scheduler(num_pages=4, page_size=4, max_prefill=64)  # 16 tokens in all
    for name in "abcd":
        scheduler.add(seq(name, 3, max_tokens=40))
    finished: dict[str, FinishReason] = {}
    for _ in range(200):
        if not scheduler.has_work:
            break
        for out in run_step(scheduler):
            if out.finish_reason is not None:
                finished[out.request_id] = out.finish_reason
        check_invariants(scheduler)
    assert finished == dict.fromkeys("abcd", FinishReason.LENGTH)
    check_idle(scheduler)


def test_a_victim_already_planned_this_step_leaves_the_plan(monkeypatch) -> None:
    """Decode rows are planned in arrival order; growing a later one may preempt an earlier one."""
    monkeypatch.setattr(scheduler_module, "MIN_NEW_TOKEN_RATIO", 0.0)
    # (Sizes found by searching for a step where the victim already had its row.)
    scheduler = make_scheduler(num_pages=3, page_size=4, max_prefill=2, radix=False)
    scheduler.new_token_ratio = 0.0
    scheduler.add(seq("first", 2, max_tokens=20))
    scheduler.add(seq("second", 1, first_token=100, max_tokens=20))
    for _ in range(12):
        planned = scheduler.schedule()
        ended = scheduler.take_finished_in_planning()
        assert planned is not None or ended
        if planned is None:
            break
        assert all(s in scheduler.running for s in planned.seqs), "a preempted sequence kept its row"
        scheduler.update(planned, [SampleResult(7, None)] * len(planned.sampled))
        check_invariants(scheduler)
    assert scheduler.num_preemptions >= 1
