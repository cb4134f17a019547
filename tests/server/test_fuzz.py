"""Schemathesis against the server's own /openapi.json: valid and invalid inputs for every
endpoint, no 5xx, every response as documented, and the server still serving after."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from .server_process import ServerProcess, healthy_server

# positive_data_acceptance is left out: rules across fields (exactly one of prompt and messages,
# max_tokens within the context, token ids within the vocabulary) are not in the schema, so some
# schema-valid requests rightly get a 400 naming the problem, which the other checks hold to the
# documented error schema.
EXAMPLES_PER_OPERATION = 150  # hypothesis stops earlier where an operation has fewer distinct inputs
MIN_CASES = 1000
tried: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--model", str(tiny_checkpoint("llama")), "--device", "cpu", "--served-model-name", "tiny"]
    # A short context keeps every generated request small: max_tokens beyond it is a 400.
    args += ["--context-length", "48", "--max-queued-requests", "100000"]
    with healthy_server(args, tmp_path_factory.mktemp("fuzz") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


# One test per generation mode over every operation (schemathesis' pytest plugin does not load
# under this pytest, so hypothesis drives its strategies directly).
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_input_breaks_the_server(
    api_schema: schemathesis.BaseSchema, fuzz_server: ServerProcess, mode: GenerationMode
) -> None:
    for operation in operations(api_schema):
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue  # no parameters, no body: nothing can be invalid

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,  # the same cases every run, so a failure in CI reproduces locally
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: schemathesis.Case) -> None:
            tried[f"{case.method} {case.path}"] += 1
            response = case.call_and_validate(
                base_url=fuzz_server.url, timeout=60, excluded_checks=[schemathesis.checks.positive_data_acceptance]
            )
            assert response.status_code < 500 or case.path == "/health_generate", response.text

        call()


def test_fuzzing_covered_every_endpoint_and_the_server_still_serves(fuzz_server: ServerProcess) -> None:
    print(dict(tried))
    assert sum(tried.values()) >= MIN_CASES, tried
    assert {"POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize", "GET /health"} <= set(tried)
    answer = httpx.post(
        f"{fuzz_server.url}/v1/completions", json={"model": "tiny", "prompt": "still here", "max_tokens": 3}
    )
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1
    assert fuzz_server.health() is not None and fuzz_server.health().status_code == 200


# -- hostile bodies, each with the exact answer a client gets -------------------------------------
def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


NEST = 100_000
HOSTILE: list[tuple[str, str, bytes, int, str]] = [
    (
        "deep-nesting",
        "/v1/completions",
        b'{"model":"tiny","prompt":' + b"[" * NEST + b"]" * NEST + b"}",
        400,
        "There was an error parsing the body",
    ),
    (
        "10MB-prompt",
        "/v1/completions",
        _json({"model": "tiny", "prompt": "a" * (10 * 1024 * 1024)}),
        400,
        "This model's maximum context length is 48 tokens; the prompt has 10485760",
    ),
    (
        "NaN",
        "/v1/completions",
        b'{"model":"tiny","prompt":"x","temperature":NaN}',
        400,
        "temperature: Input should be less than or equal to 2",
    ),
    (
        "Infinity",
        "/v1/completions",
        b'{"model":"tiny","prompt":"x","max_tokens":Infinity}',
        400,
        "max_tokens: Input should be a valid integer",
    ),
    (
        "-Infinity",
        "/v1/completions",
        b'{"model":"tiny","prompt":"x","top_p":-Infinity}',
        400,
        "top_p: Input should be greater than 0",
    ),
    (
        "invalid-utf8",
        "/v1/completions",
        b'{"model":"tiny","prompt":"\xff\xfe"}',
        400,
        "There was an error parsing the body",
    ),
    (
        "huge-n",
        "/v1/completions",
        _json({"model": "tiny", "prompt": "x", "n": 10**9}),
        400,
        "n: Input should be less than or equal to 128",
    ),
    (
        "huge-max-tokens",
        "/v1/completions",
        _json({"model": "tiny", "prompt": "x", "max_tokens": 10**12}),
        400,
        "This model's maximum context length is 48 tokens. However, you requested 1000000000001 tokens",
    ),
    (
        "huge-logprobs",
        "/v1/completions",
        _json({"model": "tiny", "prompt": "x", "logprobs": 10**6}),
        400,
        "logprobs: Input should be less than or equal to 20",
    ),
    (
        "huge-top-logprobs",
        "/v1/chat/completions",
        _json(
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 10**6}
        ),
        400,
        "top_logprobs: Input should be less than or equal to 20",
    ),
    (
        "token-beyond-vocab",
        "/v1/completions",
        _json({"model": "tiny", "prompt": [10**9]}),
        400,
        "prompt token id 1000000000 is outside the vocabulary [0, 384)",
    ),
    (
        "negative-token",
        "/v1/completions",
        _json({"model": "tiny", "prompt": [-1]}),
        400,
        "prompt token id -1 is outside the vocabulary [0, 384)",
    ),
    (
        "logit-bias-beyond-vocab",
        "/v1/completions",
        _json({"model": "tiny", "prompt": "x", "logit_bias": {"999999999": 5}}),
        400,
        "logit_bias key '999999999' is not a token id in [0, 384)",
    ),
    (
        "seed-beyond-int64",
        "/v1/completions",
        _json({"model": "tiny", "prompt": "x", "seed": 2**80}),
        400,
        "seed: Input should be less than or equal to 9223372036854775807",
    ),
    (
        "too-many-stops",
        "/v1/completions",
        _json({"model": "tiny", "prompt": "x", "stop": ["a"] * 100_000}),
        400,
        "stop: at most 16 stop strings",
    ),
    (
        "empty-messages",
        "/v1/chat/completions",
        _json({"model": "tiny", "messages": []}),
        400,
        "messages: List should have at least 1 item after validation, not 0",
    ),
    (
        "template-raises",
        "/v1/chat/completions",
        _json(
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "hi"}],
                "chat_template": "{{ raise_exception('no system prompt allowed') }}",
            }
        ),
        400,
        "messages could not be rendered with the chat template: no system prompt allowed",
    ),
    (
        "template-syntax",
        "/v1/chat/completions",
        _json({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "chat_template": "{% for %}"}),
        400,
        "messages could not be rendered with the chat template: Expected an expression",
    ),
    ("body-is-a-list", "/v1/completions", b"[]", 400, "Input should be a valid dictionary"),
    ("empty-body", "/v1/completions", b"", 400, "Field required"),
    ("wrong-model", "/v1/completions", _json({"model": "gpt-4", "prompt": "x"}), 404, "gpt-4"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_get_a_named_error(
    fuzz_server: ServerProcess, path: str, body: bytes, status: int, message: str
) -> None:
    answer = httpx.post(
        f"{fuzz_server.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=120
    )
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]["message"], answer.text
    assert fuzz_server.health() is not None and fuzz_server.health().status_code == 200, "still serving"


# A JSON value of each type; a field gets the first whose type it does not accept.
WRONG_TYPE = [("object", {"nested": True}), ("string", "seven"), ("array", [1]), ("boolean", True)]


def test_a_wrong_type_for_any_field_is_a_400_naming_it(fuzz_server: ServerProcess) -> None:
    """Every field of both generation requests, given a value of the wrong type."""
    spec = httpx.get(f"{fuzz_server.url}/openapi.json").json()["components"]["schemas"]
    for model, required in (
        ("CompletionRequest", {"prompt": "x"}),
        ("ChatCompletionRequest", {"messages": [{"role": "user", "content": "x"}]}),
    ):
        path = "/v1/completions" if model == "CompletionRequest" else "/v1/chat/completions"
        for field, schema in spec[model]["properties"].items():
            kinds = {s.get("type") for s in schema.get("anyOf", [schema])} - {None, "null"}
            wrong = next((value for kind, value in WRONG_TYPE if kind not in kinds), None)
            if not kinds or wrong is None:
                continue
            body = {"model": "tiny", **required, field: wrong}
            answer = httpx.post(f"{fuzz_server.url}{path}", json=body, timeout=60)
            assert answer.status_code == 400, (model, field, answer.text)
            assert field in answer.json()["error"]["message"], (model, field, answer.text)


def test_prompts_of_only_special_tokens_are_served(fuzz_server: ServerProcess) -> None:
    body = {"model": "tiny", "prompt": "<|im_start|><|im_end|><|im_start|>", "max_tokens": 3, "ignore_eos": True}
    answer = httpx.post(f"{fuzz_server.url}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
