"""One rank's shard of the engine: model weights, KV cache, attention backend, forward pass."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch

from .attention import AttentionLayerShape, create_backend
from .batch import DeviceBatch, ForwardBatch
from .config import ConfigError, EngineConfig, ModelConfig, ShardLayout, resolve_dtype
from .distributed import TPGroup
from .group_status import Phase
from .kv_cache import KVCacheShape, PagedKVCache
from .model import DecoderModel
from .weights import LoadProgress, fill_dummy, load_safetensors

log = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING = 256


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
        torch.manual_seed(config.seed)
        self.model = DecoderModel(model_config, group, self.max_model_len, self.dtype, group.device)
        specs = self.model.weight_specs()
        if config.load_format == "dummy":
            fill_dummy(specs, seed=config.seed)
        else:
            load_safetensors(specs, Path(config.model_path), LoadProgress(group.rank))
        log.info("rank %d: weights ready in %.2fs (%s)", group.rank, time.monotonic() - started, self.dtype)

        started = time.monotonic()
        report_phase(Phase.ALLOCATING_KV_CACHE)
        layout = ShardLayout.for_model(model_config, group.world_size)
        cache_shape = KVCacheShape(
            num_layers=model_config.num_layers,
            num_pages=self._agreed_num_pages(layout),
            page_size=config.page_size,
            num_kv_heads=layout.num_kv_heads_per_rank,
            head_dim=model_config.head_dim,
        )
        self.kv_cache = PagedKVCache(cache_shape, self.dtype, group.device)
        self.attention = create_backend(
            config.attention_backend,
            self.kv_cache,
            AttentionLayerShape(
                num_heads=layout.num_heads_per_rank,
                num_kv_heads=layout.num_kv_heads_per_rank,
                head_dim=model_config.head_dim,
                scale=model_config.head_dim**-0.5,
            ),
        )
        log.info(
            "rank %d: KV cache %d pages x %d tokens allocated in %.2fs",
            group.rank,
            cache_shape.num_pages,
            cache_shape.page_size,
            time.monotonic() - started,
        )

    @property
    def num_pages(self) -> int:
        return self.kv_cache.shape.num_pages

    def _agreed_num_pages(self, layout: ShardLayout) -> int:
        """Pages that fit the memory budget on every rank (all ranks must agree on one count)."""
        probe = KVCacheShape(self.model_config.num_layers, 1, self.config.page_size, layout.num_kv_heads_per_rank, self.model_config.head_dim)
        per_page = probe.bytes_per_page(self.dtype)
        budget = self._kv_budget_bytes()
        pages = max(0, budget // per_page)
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
        batch = DeviceBatch.build(plan, self.group.device)
        self.attention.plan(plan)
        return self.model(batch.token_ids, batch.positions, batch.sample_indices, self.attention)


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
