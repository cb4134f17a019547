"""A soak of the OpenAI API: many concurrent streaming clients for a set time, some misbehaving.

Each client loops until the time is up, picking one behaviour per request:
- `disconnect`: a stream it drops after 0-4 chunks (0: still in prefill, before any token);
- `n`: a streamed request with n = 2 or 3, every choice checked;
- `stop`: a stream with stop strings, the text checked not to contain them;
- `plain`: a stream of a random length with ignore_eos, checked token for token via usage.
Every answer a client stayed for must be complete and well formed (chunks parse, one finish reason
per choice, usage as asked, `[DONE]` last). `bench/soak.py` prints the table; the suite runs a short one.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from .metrics_text import samples, scrape_text

BEHAVIOURS = ("disconnect", "n", "stop", "plain")
WEIGHTS = (0.25, 0.15, 0.2, 0.4)
STOPS = ["e", "a "]


@dataclass
class SoakReport:
    clients: int
    seconds: float
    requests: Counter[str] = field(default_factory=Counter)  # by behaviour
    completed: int = 0
    disconnected: int = 0
    malformed: list[str] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)  # HTTP status of requests turned away


class Malformed(AssertionError):
    pass


async def _events(response: httpx.Response) -> Any:
    """The data of each server-sent event; the last must be [DONE]."""
    done = False
    async for line in response.aiter_lines():
        if not line:
            continue
        if not line.startswith("data: "):
            raise Malformed(f"not an SSE data line: {line[:80]!r}")
        if done:
            raise Malformed("data after [DONE]")
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            done = True
            continue
        event = json.loads(data)
        if "error" in event:
            raise Malformed(f"error event: {event['error']}")
        yield event
    if not done:
        raise Malformed("stream ended without [DONE]")


async def _complete(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[dict[int, str], dict[int, str], int]:
    """Stream `body` to its end: (text by choice, finish reason by choice, completion tokens)."""
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    used = -1
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise _Refused(response.status_code)
        async for event in _events(response):
            for choice in event["choices"]:
                index = choice["index"]
                if index in finishes:
                    raise Malformed(f"choice {index} continued after its finish reason")
                texts[index] = texts.get(index, "") + choice["text"]
                if choice["finish_reason"] is not None:
                    finishes[index] = choice["finish_reason"]
            if event.get("usage"):
                used = event["usage"]["completion_tokens"]
    return texts, finishes, used


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _disconnect(http: httpx.AsyncClient, rng: random.Random, prompt: str) -> None:
    keep = rng.randrange(5)
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 64, "stream": True, "ignore_eos": True}
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise _Refused(response.status_code)
        seen = 0
        async for _ in response.aiter_lines():
            if seen >= keep:
                break  # closing the stream mid-way is the client going away
            seen += 1


async def _one_request(http: httpx.AsyncClient, rng: random.Random, behaviour: str, report: SoakReport) -> None:
    prompt = " ".join(rng.choice(["tensor", "parallel", "rank", "page", "stream", "cache"]) for _ in range(6))
    if behaviour == "disconnect":
        await _disconnect(http, rng, prompt)
        report.disconnected += 1
        return
    tokens = rng.randrange(1, 24)
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "max_tokens": tokens, "stream": True}
    body["stream_options"] = {"include_usage": True}
    n = 1
    if behaviour == "n":
        n = rng.choice([2, 3])
        body |= {"n": n, "ignore_eos": True, "temperature": 1.0, "seed": rng.randrange(2**31)}
    elif behaviour == "stop":
        body |= {"stop": STOPS, "temperature": 1.0}
    else:
        body |= {"ignore_eos": True, "temperature": 0}
    texts, finishes, used = await _complete(http, body)
    if sorted(finishes) != list(range(n)):
        raise Malformed(f"{behaviour}: finish reasons {finishes} for n={n}")
    if behaviour == "stop":
        for text in texts.values():
            if any(stop in text for stop in STOPS):
                raise Malformed(f"stop string left in the text {text!r}")
        if set(finishes.values()) - {"stop", "length"}:
            raise Malformed(f"stop: finish reasons {finishes}")
    else:
        if set(finishes.values()) != {"length"} or used != tokens * n:
            raise Malformed(f"{behaviour}: {used} tokens for {n}x{tokens}, finish {finishes}")
    report.completed += 1


@dataclass(frozen=True)
class Until:
    """When clients stop starting requests: after `deadline`, once `min_requests` have ended
    (answered or walked away from), and in any case at `hard_deadline`."""

    deadline: float
    min_requests: int
    hard_deadline: float

    def more(self, report: SoakReport) -> bool:
        now = time.monotonic()
        if now >= self.hard_deadline:
            return False
        return now < self.deadline or report.completed + report.disconnected < self.min_requests


async def _client(url: str, seed: int, until: Until, report: SoakReport) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120)) as http:
        while until.more(report):
            behaviour = rng.choices(BEHAVIOURS, WEIGHTS)[0]
            report.requests[behaviour] += 1
            try:
                await _one_request(http, rng, behaviour, report)
            except _Refused as refused:
                report.refused[refused.status] += 1
                await asyncio.sleep(1)  # as Retry-After asks
            except (Malformed, json.JSONDecodeError, KeyError, httpx.HTTPError) as exc:
                report.malformed.append(f"{behaviour}: {type(exc).__name__}: {exc}")


async def soak(url: str, clients: int, seconds: float, seed: int = 0, min_requests: int = 0) -> SoakReport:
    """`clients` clients for `seconds`, and on past it until `min_requests` requests have ended (so a
    slow machine soaks as many requests as a fast one, for longer; at most 10x `seconds`)."""
    report = SoakReport(clients, seconds)
    started = time.monotonic()
    until = Until(started + seconds, min_requests, started + 10 * seconds)
    await asyncio.gather(*(_client(url, seed * 100_003 + i, until, report) for i in range(clients)))
    report.seconds = time.monotonic() - started
    return report


def scrape(url: str) -> dict[str, float]:
    """The server's gauges and counters, name -> value summed over their label sets."""
    totals: dict[str, float] = {}
    for sample in samples(scrape_text(url)):
        totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def wait_quiet(url: str, timeout_s: float = 60) -> dict[str, float]:
    """Metrics once nothing runs or waits (the last report of rank 0 follows the last request)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape(url)
        if metrics["tpserve_num_requests_running"] == 0 and metrics["tpserve_num_requests_waiting"] == 0:
            return metrics
        if time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)
