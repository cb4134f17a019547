"""The radix prefix cache: shared prefixes computed once, exact results, pages never lost."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpserve import LLM, SamplingParams
from tpserve.engine import scheduler as scheduler_module
from tpserve.engine.scheduler import FinishReason, Scheduler, SchedulerLimits, Sequence

from .reference import hf_greedy
from .scheduler_invariants import OverlappedSteps, check_idle, check_invariants, computed_from, run_step

EOS = 2


def make_scheduler(num_pages: int = 32, page_size: int = 4, max_prefill: int = 64, max_running: int = 8) -> Scheduler:
    return Scheduler(SchedulerLimits(page_size, num_pages, max_running, max_prefill, 256, (EOS,)))


def request(request_id: str, prompt: list[int], max_tokens: int = 3, stop: tuple[int, ...] = ()) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, stop_token_ids=stop)
    return Sequence(request_id, list(prompt), len(prompt), params)


def drain(scheduler: Scheduler, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if not scheduler.has_work:
            return
        run_step(scheduler)
        check_invariants(scheduler)
    raise AssertionError("requests did not finish")


PREFIX = list(range(100, 110))  # 10 tokens: two full pages of 4 and half a page


def test_a_shared_prefix_is_computed_once() -> None:
    scheduler = make_scheduler()
    scheduler.add(request("first", [*PREFIX, 1, 2, 3]))
    drain(scheduler)
    second = request("second", [*PREFIX, 4, 5])
    scheduler.add(second)
    step = scheduler.schedule()
    # Two full pages (8 tokens) come from the cache; the rest of the prompt, mid-page, is computed.
    assert computed_from(step, second) == 8 and step is not None and list(step.batch.query_lens) == [4]
    assert (scheduler.prefix_hit_tokens, scheduler.prefix_queried_tokens) == (8, 13 + 12)
    scheduler.abort("second")
    check_idle(scheduler)


def test_the_last_prompt_token_is_always_computed() -> None:
    scheduler = make_scheduler()
    scheduler.add(request("first", PREFIX[:8]))
    drain(scheduler)
    again = request("again", PREFIX[:8])
    scheduler.add(again)
    step = scheduler.schedule()
    assert step is not None and list(step.batch.query_lens) == [4]
    assert computed_from(step, again) == 4, "one page short of the whole prompt"
    assert list(step.batch.sample) == [True]


def test_requests_in_the_same_step_end_up_sharing_one_copy() -> None:
    """n > 1: the choices of one prompt start together; their duplicate pages are merged as they fill."""
    scheduler = make_scheduler()
    choices = [request(f"choice-{i}", PREFIX) for i in range(3)]
    for choice in choices:
        scheduler.add(choice)
    run_step(scheduler)
    check_invariants(scheduler)
    assert choices[0].pages[:2] == choices[1].pages[:2] == choices[2].pages[:2]
    assert choices[0].pages[2] != choices[1].pages[2], "the partial last page stays private"
    assert scheduler.pages_in_use == 2 + 3
    drain(scheduler)
    check_idle(scheduler)


def test_eviction_takes_the_least_recently_used_prefix() -> None:
    scheduler = make_scheduler(num_pages=6)
    for name, first in (("old", 0), ("new", 50)):
        scheduler.add(request(name, list(range(first, first + 9)), max_tokens=1))
        drain(scheduler)
    assert scheduler.radix is not None and scheduler.radix.num_evictable == 4
    # Needs 4 pages, 2 are free: the two pages of "old" go, those of "new" stay.
    scheduler.add(request("big", list(range(200, 215)), max_tokens=1))
    run_step(scheduler)
    check_invariants(scheduler)
    reuse = request("new-again", list(range(50, 59)))
    old_again = request("old-again", list(range(0, 9)))
    drain(scheduler)
    scheduler.add(reuse)
    scheduler.add(old_again)
    step = scheduler.schedule()
    assert computed_from(step, reuse) == 8 and computed_from(step, old_again) == 0
    drain(scheduler)
    check_idle(scheduler)


@pytest.mark.parametrize("steps_before_abort", [1, 3], ids=["mid-prefill", "mid-decode"])
def test_abort_leaves_the_tree_consistent(steps_before_abort: int) -> None:
    scheduler = make_scheduler(max_prefill=4)
    scheduler.add(request("sibling", [*PREFIX, 9], max_tokens=8))
    scheduler.add(request("victim", [*PREFIX, 8], max_tokens=8))
    for _ in range(steps_before_abort):
        run_step(scheduler)
    out = scheduler.abort("victim")
    assert out is not None and out.finish_reason == FinishReason.ABORT
    check_invariants(scheduler)
    drain(scheduler)
    check_idle(scheduler)
    later = request("later", [*PREFIX, 7])
    scheduler.add(later)
    assert computed_from(scheduler.schedule(), later) == 8, "the pages computed before the abort still serve"


def test_a_waiting_request_is_counted_once_when_admitted() -> None:
    scheduler = make_scheduler(num_pages=12)
    scheduler.add(request("warm", [*PREFIX, 1]))
    drain(scheduler)
    scheduler.add(request("long", list(range(300, 332)), max_tokens=12))
    scheduler.add(request("waits", [*PREFIX, 2]))
    run_step(scheduler)
    queried = scheduler.prefix_queried_tokens
    for _ in range(4):  # "long" is expected to need the rest of the cache: "waits" waits
        run_step(scheduler)
        assert [s.request_id for s in scheduler.waiting] == ["waits"]
        assert scheduler.prefix_queried_tokens == queried
    drain(scheduler)
    assert scheduler.prefix_queried_tokens == queried + 11, "looked up once, when admitted"
    check_idle(scheduler)


@pytest.mark.parametrize(("policy", "expected"), [("lpm", ["shares-1", "shares-2"]), ("fcfs", ["other-0", "other-1"])])
def test_longest_cached_prefix_goes_first_under_lpm(policy: str, expected: list[str]) -> None:
    scheduler = Scheduler(SchedulerLimits(4, 64, 1, 64, 256, (EOS,), schedule_policy=policy))
    scheduler.add(request("warm", [*PREFIX, 1]))
    drain(scheduler)
    for i in range(3):
        scheduler.add(request(f"other-{i}", [50 + i, 51, 52]))
    for i in (1, 2):
        scheduler.add(request(f"shares-{i}", [*PREFIX, i]))
    order = []
    while scheduler.has_work:
        for out in run_step(scheduler):
            if out.finish_reason is not None:
                order.append(out.request_id)
    assert order[:2] == expected
    check_idle(scheduler)


def test_an_overdue_request_is_not_passed_over() -> None:
    scheduler = Scheduler(SchedulerLimits(4, 64, 1, 64, 256, (EOS,), max_queue_age_s=5.0))
    scheduler.add(request("warm", [*PREFIX, 1]))
    drain(scheduler)
    for i in range(4):
        scheduler.add(request(f"shares-{i}", [*PREFIX, i]))
    overdue = request("overdue", [60, 61, 62])  # queued last, nothing cached, but waiting a minute
    overdue.arrival_time -= 60.0
    scheduler.add(overdue)
    first = []
    while scheduler.has_work and not first:
        first = [out.request_id for out in run_step(scheduler) if out.finish_reason is not None]
    assert first == ["overdue"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_pages=st.integers(4, 24),
    page_size=st.sampled_from([1, 2, 4]),
    max_prefill=st.integers(1, 24),
    arrivals=st.lists(
        st.tuples(
            st.integers(0, 3),  # which of four shared prefixes
            st.integers(0, 12),  # prefix length used
            st.integers(1, 6),  # own tail length
            st.integers(1, 12),  # max_tokens
            st.integers(0, 6),  # steps before the next arrival
            st.booleans(),  # aborted two steps later
        ),
        min_size=1,
        max_size=12,
    ),
    optimistic=st.booleans(),
    overlap=st.booleans(),
    eos_every=st.sampled_from([0, 3, 7]),
)
def test_random_traffic_keeps_every_invariant_and_finishes(
    num_pages: int,
    page_size: int,
    max_prefill: int,
    arrivals: list[tuple[int, int, int, int, int, bool]],
    optimistic: bool,
    overlap: bool,
    eos_every: int,
) -> None:
    """Random arrivals through the scheduler, driven with or without overlap.

    Every `eos_every`-th sampled token is EOS (0: never), so stops land mid-overlap too. An
    optimistic estimate of decode growth (none) admits more than fits: preemption galore.
    """
    ratio = 0.0 if optimistic else scheduler_module.MIN_NEW_TOKEN_RATIO
    with mock.patch.object(scheduler_module, "MIN_NEW_TOKEN_RATIO", ratio):
        scheduler = Scheduler(SchedulerLimits(page_size, num_pages, 4, max_prefill, 40, (EOS,)))
        if optimistic:
            scheduler.new_token_ratio = 0.0
        prefixes = [list(range(1000 * k, 1000 * k + 12)) for k in range(4)]
        finished: set[str] = set()
        emitted: dict[str, list[int]] = {}
        aborts: list[tuple[int, str]] = []
        clock = 0
        capacity_tokens = num_pages * page_size
        samples = itertools.count(1)
        driver = OverlappedSteps(scheduler, lambda: EOS if eos_every and next(samples) % eos_every == 0 else 7)

        def advance() -> None:
            nonlocal clock
            outputs = driver.step() if overlap else run_step(scheduler)
            for out in outputs:
                assert out.request_id not in finished, f"{out.request_id} reported after it finished"
                if out.token_id is not None:
                    emitted.setdefault(out.request_id, []).append(out.token_id)
                if out.finish_reason is not None:
                    finished.add(out.request_id)
                if out.finish_reason == FinishReason.STOP:
                    assert emitted[out.request_id][-1] == EOS, "a stop ends on its stop token"
            clock += 1
            for due, rid in [a for a in aborts if a[0] <= clock]:
                aborts.remove((due, rid))
                if scheduler.abort(rid) is not None:
                    finished.add(rid)
            check_invariants(scheduler)

        added = []
        max_tokens_of: dict[str, int] = {}
        for i, (which, shared, tail, max_tokens, gap, abort) in enumerate(arrivals):
            prompt = prefixes[which][:shared] + list(range(500 + 10 * i, 500 + 10 * i + tail))
            if len(prompt) + 1 > capacity_tokens or len(prompt) >= 40:
                continue  # refused at admission (tested elsewhere)
            rid = f"r{i}"
            scheduler.add(request(rid, prompt, max_tokens=max_tokens, stop=(EOS,)))
            max_tokens_of[rid] = max_tokens
            added.append(rid)
            if abort:
                aborts.append((clock + 2, rid))
            for _ in range(gap):
                if driver.busy if overlap else scheduler.has_work:
                    advance()
        for _ in range(2000):
            if not (driver.busy if overlap else scheduler.has_work):
                break
            advance()
        assert set(added) <= finished, "every request finishes (or is aborted)"
        for rid, tokens in emitted.items():
            assert len(tokens) <= max_tokens_of[rid], f"{rid} got more than max_tokens"
            assert EOS not in tokens[:-1], f"{rid} went on past a stop"
        check_idle(scheduler)


# -- the engine: greedy outputs equal with the cache on and off, and equal transformers --------

SYSTEM = list(range(40, 80))  # a 40-token "system prompt": five pages of 8


@pytest.fixture(scope="module", params=[False, True], ids=["radix", "no-radix"])
def engine(request: pytest.FixtureRequest, tiny_checkpoint) -> Iterator[tuple[LLM, Path]]:
    path = tiny_checkpoint("llama")
    with LLM(str(path), tp=2, page_size=8, max_prefill_length=16, disable_radix_cache=request.param) as llm:
        yield llm, path


GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def test_many_requests_sharing_a_system_prompt(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    prompts = [[*SYSTEM, 200 + i, 7, 9 + i] for i in range(6)]
    first = llm.generate(prompts[:1], GREEDY)  # the prefix is cached before the others arrive
    rest = llm.generate(prompts[1:], GREEDY)
    for prompt, out in zip(prompts, first + rest):
        assert out.token_ids == hf_greedy(path, prompt, 8)
    assert llm.pages_used == 0


def test_multi_turn_conversation_extends_the_cached_turns(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    conversation = [*SYSTEM[:12], 300, 301]
    for turn in range(3):
        [answer] = llm.generate([conversation], GREEDY)
        assert answer.token_ids == hf_greedy(path, conversation, 8), f"turn {turn}"
        conversation = [*conversation, *answer.token_ids, 310 + turn, 320 + turn]
    assert llm.pages_used == 0


def test_prefixes_that_end_mid_page(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    shared = SYSTEM[:13]  # one full page of 8 and 5 tokens of the next
    prompts = [[*shared, 250 + i] for i in range(3)]
    outputs = [llm.generate([p], GREEDY)[0] for p in prompts]
    for prompt, out in zip(prompts, outputs):
        assert out.token_ids == hf_greedy(path, prompt, 8)
    assert llm.pages_used == 0


def test_a_small_cache_evicts_and_stays_exact(tiny_checkpoint) -> None:
    path = tiny_checkpoint("qwen2")
    prompts = [[*SYSTEM[: 16 + 4 * (i % 3)], 260 + i] for i in range(8)]
    with LLM(str(path), tp=1, page_size=8, max_total_tokens=96) as llm:
        outputs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
        assert llm.pages_used == 0
    for prompt, out in zip(prompts, outputs):
        assert out.token_ids == hf_greedy(path, prompt, 12)


def test_over_long_requests_under_a_tiny_cache_all_finish(tiny_checkpoint) -> None:
    """The livelock case end to end: a context beyond the cache is clamped, and four requests that
    each want more tokens than the whole cache holds all finish, one after another, with length."""
    path = tiny_checkpoint("llama")
    prompts = [list(range(20 + i, 30 + i)) for i in range(4)]
    with LLM(str(path), tp=1, page_size=8, max_total_tokens=64, context_length=200) as llm:
        outputs = llm.generate(prompts, SamplingParams(max_tokens=150, temperature=0, ignore_eos=True))
        [after] = llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        assert llm.pages_used == 0
    for prompt, out in zip(prompts, outputs):
        assert out.finish_reason == "length"
        assert len(prompt) + len(out.token_ids) == 64, "each grew until the whole cache was its own"
        assert out.token_ids == hf_greedy(path, prompt, 64 - len(prompt))
    assert len(after.token_ids) == 4
