"""Reading a /metrics page in tests and benchmarks: samples by name, filtered by labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`; an error if there is none."""
    found = [s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()]
    if not found:
        raise KeyError(f"{name}{labels or ''} is not on the metrics page")
    return float(sum(found))


def scrape_text(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def scrape_value(url: str, name: str, **labels: str) -> float:
    return value(scrape_text(url), name, **labels)
