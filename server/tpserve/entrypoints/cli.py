"""The `tpserve` command line: one parser, SGLang's flag names, shared with the operator's contract test.

`build_parser()` is the single source of truth for flags; `server_args(argv)` parses and checks
them and returns a `ServerArgs`, exiting with one clear line (code 2) on a bad combination,
before any process or collective starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

import torch

from ..core.errors import ConfigError
from ..core.logs import LOG_FORMATS, configure_logging
from ..engine.config import EngineConfig
from ..models.config import ModelConfig
from .model_source import resolve_model
from .reasoning import REASONING_PARSERS
from .tool_calls import TOOL_CALL_PARSERS

# Generous: a queue this long is minutes of work; the bound is there so memory cannot grow without one.
DEFAULT_MAX_QUEUED_REQUESTS = 4096


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _attention(text: str) -> str:
    parts = text.split(",")
    if len(parts) > 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected a backend name or a 'prefill,decode' pair, got {text!r}")
    return text


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags end in exactly one line on stderr (no usage dump), so logs show the cause plainly."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="tpserve",
        description="Tensor-parallel LLM server with an OpenAI-compatible API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "--model-path",
        dest="model",
        required=True,
        help="HF-format model directory (config.json, *.safetensors, tokenizer files), a .gguf file, "
        "a directory holding one .gguf file, or a hub id org/name (huggingface_hub; HF_HOME, HF_TOKEN, "
        "HF_ENDPOINT and HF_HUB_OFFLINE are honoured)",
    )
    model.add_argument("--revision", help="hub model: a branch, tag or commit (default: main)")
    model.add_argument(
        "--model-source",
        choices=["huggingface", "modelscope"],
        default="huggingface",
        help="where a hub id is downloaded from (modelscope needs the modelscope package)",
    )
    model.add_argument(
        "--tokenizer",
        "--tokenizer-path",
        dest="tokenizer",
        help="tokenizer directory to use instead of the checkpoint's own (a GGUF file carries one)",
    )
    model.add_argument("--served-model-name", help="name reported by /v1/models (default: the directory name)")
    model.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="weight and activation dtype; auto takes the checkpoint's (float32 on CPU)",
    )
    model.add_argument(
        "--load-format",
        default="auto",
        choices=["auto", "dummy"],
        help="auto reads safetensors; dummy fills random weights (benchmarks)",
    )
    model.add_argument(
        "--context-length",
        type=_positive_int,
        help="maximum tokens per request, prompt included (default: the model's)",
    )

    parallel = parser.add_argument_group("parallelism")
    parallel.add_argument(
        "--tp",
        "--tp-size",
        dest="tp",
        type=_positive_int,
        default=1,
        help="tensor-parallel size (all ranks, all nodes)",
    )
    parallel.add_argument("--nnodes", type=_positive_int, default=1, help="number of nodes in the group")
    parallel.add_argument("--node-rank", type=_non_negative_int, default=0, help="this node's index in the group")
    parallel.add_argument(
        "--dist-init-addr",
        type=_host_port,
        help="HOST:PORT of node 0's rendezvous (default: 127.0.0.1 and a free port)",
    )
    parallel.add_argument(
        "--dist-timeout", type=float, default=300.0, help="seconds before a stuck collective is declared dead"
    )

    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default="0.0.0.0", help="HTTP bind address")
    serving.add_argument(
        "--port", type=int, default=30000, help="HTTP port (node 0: the API; other nodes: a health endpoint)"
    )
    serving.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    serving.add_argument(
        "--max-queued-requests",
        type=_positive_int,
        default=DEFAULT_MAX_QUEUED_REQUESTS,
        help="generation requests (choices) that may wait for the engine; beyond it 429 with Retry-After",
    )
    serving.add_argument(
        "--request-timeout",
        type=_positive_float,
        help="seconds a request may run before it is aborted (504, or an error event mid-stream); default none",
    )
    serving.add_argument(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=25.0,
        help="on SIGTERM: seconds in-flight requests get to finish before the group stops",
    )
    serving.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serving.add_argument(
        "--vllm-metric-names",
        action="store_true",
        help="also expose the load gauges under vLLM's names (vllm:num_requests_waiting, vllm:kv_cache_usage_perc, ...)",
    )
    serving.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="json: one JSON object per line (time, level, logger, node, rank, request_id, message)",
    )
    serving.add_argument(
        "--tool-call-parser",
        choices=TOOL_CALL_PARSERS,
        help="the model's tool-call syntax, for tool_choice auto (default: detected from the chat template)",
    )
    serving.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help="accepted for vLLM's command lines: tool_choice auto works whenever a tool-call parser is known",
    )
    serving.add_argument(
        "--reasoning-parser",
        choices=REASONING_PARSERS,
        help="return a thinking model's <think>...</think> as reasoning_content (qwen3, deepseek_r1)",
    )

    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default=None,
        help="cuda, or cpu (gloo; for tests and the demo) (default: cuda if available)",
    )
    engine.add_argument(
        "--mem-fraction-static", type=_fraction, default=0.9, help="fraction of device memory for weights + KV cache"
    )
    engine.add_argument(
        "--max-prefill-length",
        type=_positive_int,
        default=8192,
        help="token budget of one prefill chunk (chunked prefill)",
    )
    engine.add_argument("--page-size", type=_positive_int, default=16, help="KV cache page size in tokens")
    engine.add_argument(
        "--max-running-requests", type=_positive_int, help="cap on concurrently decoding requests (default: auto)"
    )
    engine.add_argument("--max-total-tokens", type=_positive_int, help="cap on KV cache size in tokens")
    engine.add_argument(
        "--disable-radix-cache",
        action="store_true",
        help="do not share the KV pages of common prompt prefixes between requests",
    )
    engine.add_argument(
        "--disable-overlap-schedule",
        action="store_true",
        help="plan each step after the previous one has finished instead of while it runs",
    )
    engine.add_argument(
        "--schedule-policy",
        default="lpm",
        choices=["lpm", "fcfs"],
        help="waiting-queue order: lpm serves the longest cached prefix first (once the queue is long), "
        "fcfs arrival order",
    )
    engine.add_argument(
        "--max-prefill-streak",
        type=int,
        default=1,
        help="prefill steps in a row while running streams wait for a token (1: prefill and decode "
        "steps alternate; more: a burst of arrivals prefills before the streams go on)",
    )
    engine.add_argument(
        "--attn",
        default=None,
        type=_attention,
        help="attention backend: fi (flashinfer), torch, or a 'prefill,decode' pair "
        "(default: fi on cuda, torch on cpu)",
    )
    engine.add_argument(
        "--cuda-graph-max-bs", type=_positive_int, default=256, help="largest decode batch captured in a CUDA graph"
    )
    engine.add_argument(
        "--cuda-graph-max-prefill-tokens",
        type=_non_negative_int,
        default=0,
        help="replay prefill steps of one sequence and up to this many new tokens from CUDA graphs (0: off)",
    )
    engine.add_argument("--disable-cuda-graph", action="store_true", help="run decode without CUDA graphs")
    engine.add_argument("--disable-custom-all-reduce", action="store_true", help="always use NCCL for all-reduce")
    engine.add_argument(
        "--enable-p2p-check", action="store_true", help="probe GPU peer access before using the custom all-reduce"
    )
    engine.add_argument("--seed", type=int, default=0, help="seed of the shared sampling generator")
    return parser


@dataclass(frozen=True)
class ServerArgs:
    engine: EngineConfig
    model: ModelConfig
    served_model_name: str
    host: str
    port: int
    api_key: str | None
    log_level: str
    log_format: str = "text"
    vllm_metric_names: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    request_timeout_s: float | None = None
    shutdown_timeout_s: float = 25.0


def engine_config_from(ns: argparse.Namespace) -> EngineConfig:
    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    attention = ns.attn or ("fi" if device == "cuda" and importlib.util.find_spec("flashinfer") else "torch")
    return EngineConfig(
        model_path=ns.model,
        tokenizer_path=ns.tokenizer,
        tp=ns.tp,
        nnodes=ns.nnodes,
        node_rank=ns.node_rank,
        dist_init_addr=ns.dist_init_addr or "127.0.0.1:0",
        device=device,
        dtype=ns.dtype,
        load_format=ns.load_format,
        mem_fraction_static=ns.mem_fraction_static,
        max_prefill_length=ns.max_prefill_length,
        page_size=ns.page_size,
        max_running_requests=ns.max_running_requests,
        max_total_tokens=ns.max_total_tokens,
        context_length=ns.context_length,
        attention_backend=attention,
        dist_timeout=ns.dist_timeout,
        seed=ns.seed,
        cuda_graph_max_bs=ns.cuda_graph_max_bs,
        cuda_graph_max_prefill_tokens=ns.cuda_graph_max_prefill_tokens,
        disable_cuda_graph=ns.disable_cuda_graph,
        disable_custom_all_reduce=ns.disable_custom_all_reduce,
        enable_p2p_check=ns.enable_p2p_check,
        disable_radix_cache=ns.disable_radix_cache,
        disable_overlap_schedule=ns.disable_overlap_schedule,
        schedule_policy=ns.schedule_policy,
        max_prefill_streak=ns.max_prefill_streak,
    )


def default_served_name(model: str) -> str:
    """The model directory's name, or a GGUF file's name without `.gguf`."""
    path = Path(model).resolve()
    return path.stem if path.suffix == ".gguf" else path.name


def server_args(argv: list[str] | None = None) -> ServerArgs:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.nnodes > 1 and not ns.dist_init_addr:
        parser.error("--dist-init-addr is required with --nnodes > 1 (every node must find node 0)")
    if not 0 < ns.port < 65536:
        parser.error(f"--port must be in 1..65535, got {ns.port}")
    # The server's log format from the first line on: a hub download logs its progress.
    configure_logging(ns.log_level, ns.log_format, node=ns.node_rank)
    try:
        # A hub id becomes a downloaded snapshot before anything reads the model.
        resolved = resolve_model(ns.model, ns.revision, ns.model_source, ns.node_rank, ns.dist_init_addr or "")
        config = replace(engine_config_from(ns), model_path=resolved.path, model_commit=resolved.commit)
        model = config.validate()
    except ConfigError as exc:
        parser.exit(2, f"tpserve: error: {exc}\n")
    return ServerArgs(
        engine=config,
        model=model,
        # A hub model is served under its id, as vLLM does.
        served_model_name=ns.served_model_name or resolved.hub_id or default_served_name(ns.model),
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key,
        log_level=ns.log_level,
        log_format=ns.log_format,
        vllm_metric_names=ns.vllm_metric_names,
        tool_call_parser=ns.tool_call_parser,
        reasoning_parser=ns.reasoning_parser,
        max_queued_requests=ns.max_queued_requests,
        request_timeout_s=ns.request_timeout,
        shutdown_timeout_s=ns.shutdown_timeout,
    )


if __name__ == "__main__":  # pragma: no cover - convenience: print the parsed arguments
    print(server_args(sys.argv[1:]))
