"""One rank's shard of the engine: model weights, KV cache, attention backend, forward pass."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable

import torch

from ..attention import AttentionLayerShape, create_backend
from ..core.batch import ForwardBatch
from ..core.errors import ConfigError
from ..distributed.all_reduce import CustomAllReduceRequest, try_one_shot
from ..distributed.group import TPGroup
from ..distributed.status_board import Phase
from ..kvcache.paged_cache import KVCacheShape, PagedKVCache
from ..kvcache.request_tables import RequestTables, to_device
from ..layers.embedding import ParallelLMHead
from ..layers.linear import ColumnParallelLinear, RowParallelLinear
from ..layers.skinny_choice import choose_skinny_projections, log_choices
from ..models.config import ModelConfig, ShardLayout, resolve_dtype
from ..models.decoder import DecoderModel
from ..models.weights import LoadProgress, fill_dummy
from .config import EngineConfig
from .cuda_graph import CudaGraphCapture, DecodeGraphs, GraphCapture
from .memory_probe import MemoryMeter, memory_meter, step_peak_bytes
from .prefill_graph import PrefillGraphs

log = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING = 256
GRAPH_MEMORY_HEADROOM = 1.1
GRAPH_MEMORY_FIXED_BYTES = 256 * 2**20  # allocator rounding, NCCL/one-shot buffers first touched at capture
STEP_MEMORY_HEADROOM = 1.2  # the caching allocator's fragmentation around the measured peak


class ModelRunner:
    def __init__(
        self,
        config: EngineConfig,
        model_config: ModelConfig,
        group: TPGroup,
        report_phase: Callable[[Phase], None] = lambda phase: None,
    ) -> None:
        self.config = config
        self.model_config = model_config
        self.group = group
        self.dtype = resolve_dtype(config.dtype, model_config, config.device)
        self.max_model_len = config.max_model_len(model_config)
        self.max_running = config.max_running_requests or DEFAULT_MAX_RUNNING

        started = time.monotonic()
        report_phase(Phase.LOADING_WEIGHTS)
        group.small_all_reduce = try_one_shot(
            CustomAllReduceRequest(
                device_kind=group.device.type,
                world_size=group.world_size,
                nnodes=config.nnodes,
                dtype=self.dtype,
                disabled=config.disable_custom_all_reduce,
                p2p_check=config.enable_p2p_check,
            ),
            group.device,
            config.ranks_per_node,
        )
        torch.manual_seed(config.seed)
        self.model = DecoderModel(model_config, group, self.max_model_len, self.dtype, group.device)
        specs = self.model.weight_specs()
        if config.load_format == "dummy":
            fill_dummy(specs, seed=config.seed)
        else:
            config.checkpoint().load_weights(specs, model_config, LoadProgress(group.rank))
        log.info("rank %d: weights ready in %.2fs (%s)", group.rank, time.monotonic() - started, self.dtype)
        started = time.monotonic()
        skinny_timings = choose_skinny_projections(
            m for m in self.model.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear, ParallelLMHead))
        )
        if skinny_timings:
            log_choices(group.rank, skinny_timings)
            log.info("rank %d: batch-1 projections timed in %.2fs", group.rank, time.monotonic() - started)

        started = time.monotonic()
        report_phase(Phase.ALLOCATING_KV_CACHE)
        layout = ShardLayout.for_model(model_config, group.world_size)
        # The backend (and its workspace) is built over a one-page probe cache first so that
        # everything resident besides the KV cache is counted before the cache is sized.
        self.attention = create_backend(
            config.attention_backend,
            PagedKVCache(self._cache_shape(layout, num_pages=1), self.dtype, group.device),
            AttentionLayerShape(
                num_heads=layout.num_heads_per_rank,
                num_kv_heads=layout.num_kv_heads_per_rank,
                head_dim=model_config.head_dim,
                scale=model_config.head_dim**-0.5,
            ),
        )
        # One set of request tables for the engine's life: the decode graphs capture their
        # addresses, and every step's page updates must land where the graphs read.
        self.tables = self._request_tables(self.attention.cache)
        use_graphs = config.use_cuda_graph and self._graphs_supported()
        graph_max_bs = min(config.cuda_graph_max_bs, self.max_running)
        self.prefill_graph_tokens = self._prefill_graph_tokens() if use_graphs else 0
        graph_reserve = self._graph_memory_bytes(graph_max_bs) if use_graphs else 0
        meter = memory_meter(group.device)
        self.step_reserve = self._step_memory_bytes(meter) if meter is not None else 0
        cache_shape = self._cache_shape(
            layout, num_pages=self._agreed_num_pages(layout, graph_reserve + self.step_reserve)
        )
        self.attention.bind(PagedKVCache(cache_shape, self.dtype, group.device))  # frees the probe
        log.info(
            "rank %d: KV cache %d pages x %d tokens allocated in %.2fs",
            group.rank,
            cache_shape.num_pages,
            cache_shape.page_size,
            time.monotonic() - started,
        )
        self._clamp_context_to_cache(cache_shape.total_tokens)
        self.tables.reset(self.kv_cache.padding_page)  # the probe cache's padding page is gone
        if group.is_leader:
            weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            log.info(
                "weights %.2f GiB per rank; KV cache %d pages, %d tokens; %d requests at the full context of %d; "
                "%.2f GiB kept for a step's activations and sampling, %.2f GiB for CUDA graphs",
                weight_bytes / 2**30,
                cache_shape.num_pages,
                cache_shape.total_tokens,
                cache_shape.total_tokens // self.max_model_len,
                self.max_model_len,
                self.step_reserve / 2**30,
                graph_reserve / 2**30,
            )
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        if use_graphs:
            report_phase(Phase.CAPTURING_CUDA_GRAPHS)
            self.graphs, self.prefill_graphs = self._capture_graphs(graph_max_bs, graph_reserve)

    def _clamp_context_to_cache(self, cache_tokens: int) -> None:
        """One request must fit the whole cache: a longer context could never be served."""
        if self.max_model_len <= cache_tokens:
            return
        if self.group.is_leader:
            log.warning(
                "context length %d is more than the KV cache holds (%d tokens): clamped to %d "
                "(raise --mem-fraction-static or --max-total-tokens, or lower --context-length)",
                self.max_model_len,
                cache_tokens,
                cache_tokens,
            )
        self.max_model_len = cache_tokens

    def _request_tables(self, cache: PagedKVCache) -> RequestTables:
        pages_per_row = -(-self.max_model_len // self.config.page_size)
        return RequestTables(self.max_running, pages_per_row, cache.padding_page, self.group.device)

    def _cache_shape(self, layout: ShardLayout, num_pages: int) -> KVCacheShape:
        return KVCacheShape(
            num_layers=self.model_config.num_layers,
            num_pages=num_pages,
            page_size=self.config.page_size,
            num_kv_heads=layout.num_kv_heads_per_rank,
            head_dim=self.model_config.head_dim,
        )

    def _graphs_supported(self) -> bool:
        if self.attention.supports_cuda_graph:
            return True
        log.warning(
            "rank %d: --attn %s cannot be captured: decode runs without CUDA graphs",
            self.group.rank,
            self.config.attention_backend,
        )
        return False

    def _prefill_graph_tokens(self) -> int:
        """The largest prefill graph's token count (0: none), within what a prefill chunk can be."""
        tokens = min(self.config.cuda_graph_max_prefill_tokens, self.config.max_prefill_length, self.max_model_len)
        if tokens and not self.attention.supports_prefill_graph:
            log.warning(
                "rank %d: --attn %s cannot capture prefill steps: --cuda-graph-max-prefill-tokens ignored",
                self.group.rank,
                self.config.attention_backend,
            )
            return 0
        return tokens

    def _step_memory_bytes(self, meter: MemoryMeter) -> int:
        """The largest step's transient memory (memory_probe.py), measured over the probe cache."""
        peak = step_peak_bytes(
            meter,
            self.group.device,
            self.forward_eager,
            prefill_tokens=min(self.config.max_prefill_length, self.max_model_len),
            page_size=self.config.page_size,
            sample_rows=self.max_running,
            vocab_size=self.model_config.vocab_size,
            logits_dtype=self.dtype,
        )
        self.tables.reset(self.attention.cache.padding_page)
        return int(peak * STEP_MEMORY_HEADROOM)

    def _graph_memory_bytes(self, max_bs: int) -> int:
        """Device memory the decode graphs take, measured by capturing them over the probe cache.

        Graphs cost more than their activations (instantiated graphs, one flashinfer plan buffer
        per captured size, the capture stream's library workspaces: 1.4 GiB for 35 graphs of an
        8B model where one step's activations were 0.2 GiB), so the whole capture (prefill
        graphs included) is measured, then released; the real capture after the KV cache is
        allocated takes the same again.
        """
        probe_decode, probe_prefill, used = self._measured_graphs(max_bs)
        del probe_decode, probe_prefill
        self.attention.release_graph_plans()  # they hold device memory, and were sized for the probe
        gc.collect()
        torch.cuda.empty_cache()
        return int(used * GRAPH_MEMORY_HEADROOM) + GRAPH_MEMORY_FIXED_BYTES

    def _measured_graphs(self, max_bs: int) -> tuple[DecodeGraphs, PrefillGraphs | None, int]:
        """Decode and prefill graphs over the attention backend's current cache, and the device
        bytes they took."""
        device = self.group.device
        gc.collect()
        torch.cuda.empty_cache()
        free_before, _ = torch.cuda.mem_get_info(device)
        capture = CudaGraphCapture(device)  # one memory pool for all of them
        try:
            graphs = self.decode_graphs(max_bs, capture)
            prefill = self.prefill_graphs_of(self.prefill_graph_tokens, capture) if self.prefill_graph_tokens else None
        except torch.OutOfMemoryError as exc:
            raise ConfigError(
                f"out of GPU memory capturing CUDA graphs (decode up to batch {max_bs}, prefill up to "
                f"{self.prefill_graph_tokens} tokens): lower --mem-fraction-static, --cuda-graph-max-bs or "
                "--cuda-graph-max-prefill-tokens, or pass --disable-cuda-graph"
            ) from exc
        torch.cuda.synchronize(device)
        free_after, _ = torch.cuda.mem_get_info(device)
        return graphs, prefill, free_before - free_after

    def decode_graphs(self, max_bs: int, capture: GraphCapture) -> DecodeGraphs:
        """Decode graphs over this runner's model, attention backend and request tables."""
        return DecodeGraphs(self.model, self.attention, self.tables, max_bs, capture)

    def prefill_graphs_of(self, max_tokens: int, capture: GraphCapture) -> PrefillGraphs:
        """Single-sequence prefill graphs over this runner's model, attention backend and tables."""
        return PrefillGraphs(self.model, self.attention, self.tables, max_tokens, capture)

    def _capture_graphs(self, max_bs: int, reserved: int) -> tuple[DecodeGraphs, PrefillGraphs | None]:
        started = time.monotonic()
        graphs, prefill, used = self._measured_graphs(max_bs)
        log.info(
            "rank %d: captured %d decode CUDA graphs (batch 1..%d)%s in %.2fs using %.0f MiB (reserved %.0f MiB)",
            self.group.rank,
            len(graphs.sizes),
            max_bs,
            ""
            if prefill is None
            else f" and {len(prefill.buckets)} prefill graphs (1 sequence, up to {prefill.max_tokens} tokens)",
            time.monotonic() - started,
            used / 2**20,
            reserved / 2**20,
        )
        return graphs, prefill

    @property
    def kv_cache(self) -> PagedKVCache:
        """The cache the backend is bound to: the one-page probe cache until the real one is sized."""
        return self.attention.cache

    @property
    def num_pages(self) -> int:
        return self.kv_cache.shape.num_pages

    def _agreed_num_pages(self, layout: ShardLayout, reserved_bytes: int) -> int:
        """Pages that fit the memory budget on every rank (all ranks must agree on one count)."""
        per_page = self._cache_shape(layout, num_pages=1).bytes_per_page(self.dtype)
        # The probe cache (its page and the padding page) is still resident until the real one
        # replaces it; the real one also allocates a padding page.
        probe_bytes = (self.attention.cache.shape.num_pages + 1) * per_page
        budget = self._kv_budget_bytes() - reserved_bytes + probe_bytes
        pages = max(0, budget // per_page - 1)
        # Never more than every running request at full context could use.
        useful_tokens = self.max_model_len * self.max_running
        if self.config.max_total_tokens is not None:
            useful_tokens = min(useful_tokens, self.config.max_total_tokens)
        pages = min(pages, -(-useful_tokens // self.config.page_size))
        pages = self.group.all_min_int(int(pages))
        if pages * self.config.page_size < min(self.max_model_len, 2 * self.config.page_size):
            raise ConfigError(
                f"not enough memory for the KV cache ({pages} pages of {self.config.page_size} tokens); "
                "raise --mem-fraction-static or lower --context-length"
            )
        return pages

    def _kv_budget_bytes(self) -> int:
        fraction = self.config.mem_fraction_static
        if self.group.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.group.device)
            used = total - free  # weights and anything else already resident
            return int(total * fraction - used)
        available = _available_host_memory()
        return int(available * fraction / max(1, self.config.ranks_per_node))

    def forward(self, plan: ForwardBatch) -> torch.Tensor:
        """Run one step on this rank's shard; returns full-vocabulary logits of the sampled rows."""
        self.tables.apply(plan)
        if self.graphs is not None and self.graphs.can_run(plan):
            return self.graphs.run(plan)
        if self.prefill_graphs is not None and self.prefill_graphs.can_run(plan):
            return self.prefill_graphs.run(plan)
        return self._run_eager(plan)

    def forward_eager(self, plan: ForwardBatch) -> torch.Tensor:
        """The step launched op by op, never from a graph (comparisons and checks)."""
        self.tables.apply(plan)
        return self._run_eager(plan)

    def _run_eager(self, plan: ForwardBatch) -> torch.Tensor:
        inputs = self.tables.step_inputs(plan, self.kv_cache)
        self.attention.plan(inputs)
        logits: torch.Tensor = self.model(inputs.token_ids, inputs.positions, inputs.sample_indices, self.attention)
        return logits

    def record_samples(self, plan: ForwardBatch, tokens: torch.Tensor) -> None:
        """Keep the step's sampled tokens on the device: the rows' next decode step reads them."""
        self.tables.record_samples(to_device(plan.sampled_rows(), self.group.device), tokens)


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
