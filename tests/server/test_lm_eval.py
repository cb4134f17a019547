"""lm-evaluation-harness against the server: `local-completions` scores what the `hf` backend scores.

Two tasks the test writes itself (local JSON files, nothing from the hub): a multiple-choice task
scored by log-likelihood (`echo`, `logprobs`, `max_tokens: 0` on completions) and a greedy
generation task with a stop sequence. The tiny model's answers are random, so the claim is
equality: the same per-choice log-likelihoods (within float32 noise), the same choices picked, the
same generations, the same scores as lm-eval's own transformers backend on the same checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .server_process import ServerProcess, healthy_server

QUESTIONS = [
    ("The capital of France is", ["Paris", "Rome", "Berlin", "Madrid"], 0),
    ("Two plus two equals", ["three", "four", "five"], 1),
    ("The sky on a clear day is", ["green", "blue", "red"], 1),
    ("Water freezes at zero degrees", ["Celsius", "Fahrenheit"], 0),
    ("The opposite of hot is", ["warm", "cold", "loud", "fast"], 1),
    ("A week has seven", ["days", "hours", "years"], 0),
]
PROMPTS = [("Count: one two three", "four"), ("Letters: a b c", "d"), ("Colours: red green", "blue")]


def _tasks(root: Path) -> Path:
    """Task YAMLs over local JSON lines (lm-eval's `json` dataset builder reads them offline)."""
    mc = root / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    gen = root / "gen.jsonl"
    gen.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PROMPTS))
    (root / "tiny_mc.yaml").write_text(
        f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
"""
    )
    (root / "tiny_gen.yaml").write_text(
        f"""task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {gen}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
"""
    )
    return root


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("lm_eval") / "server.log"
    with healthy_server(["--model", str(model_dir), "--device", "cpu", "--served-model-name", "tiny"], log) as proc:
        yield proc


def _evaluate(model: str, model_args: dict[str, Any], tasks_dir: Path) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results: dict[str, Any] = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["tiny_mc", "tiny_gen"],
        task_manager=TaskManager(include_path=str(tasks_dir)),
        log_samples=True,
        batch_size=1,
    )
    return results


def _loglikelihoods(results: dict[str, Any]) -> list[float]:
    return [float(resp[0][0]) for sample in results["samples"]["tiny_mc"] for resp in sample["resps"]]


def test_local_completions_scores_equal_the_hf_backend(
    server: ServerProcess, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks_dir = _tasks(tmp_path)
    served = _evaluate(
        "local-completions",
        {
            "model": "tiny",
            "base_url": f"{server.url}/v1/completions",
            "tokenizer_backend": "huggingface",
            "tokenizer": str(model_dir),
            "num_concurrent": 1,
            "max_retries": 1,
        },
        tasks_dir,
    )
    reference = _evaluate("hf", {"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"}, tasks_dir)

    ours, theirs = _loglikelihoods(served), _loglikelihoods(reference)
    assert len(ours) == sum(len(c) for _, c, _ in QUESTIONS)
    assert ours == pytest.approx(theirs, abs=1e-3)
    for task, metric in (("tiny_mc", "acc,none"), ("tiny_gen", "exact_match,none")):
        assert served["results"][task][metric] == reference["results"][task][metric], task
    generated = [s["resps"][0][0] for s in served["samples"]["tiny_gen"]]
    assert generated == [s["resps"][0][0] for s in reference["samples"]["tiny_gen"]]
    assert any(generated)  # the generations are not all empty
