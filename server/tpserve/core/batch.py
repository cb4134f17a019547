"""The step plan rank 0 broadcasts to every rank, and the tensors each rank derives from it.

Each rank keeps its own persistent request tables (`kvcache/request_tables.py`): per request row
its page ids and the last token its sampler produced. A plan therefore names rows rather than
carrying whole page tables, and carries only the page ids that changed since the last step; a
decode row's input token is taken from the device (the previous step's sample), so the next
step can be planned before the previous step's tokens reach the host (overlap scheduling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

IntArray = npt.NDArray[np.int64]

# In `ForwardBatch.token_ids`: this token is the one the row's previous step sampled, on the device.
FROM_DEVICE = -1


def _ints(values: object) -> IntArray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _same_arrays(a: object, b: object) -> bool:
    """Field by field equality of two dataclasses whose fields are arrays (or such dataclasses)."""
    if type(a) is not type(b):
        return False
    return all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(vars(a).values(), vars(b).values(), strict=True)
    )


@dataclass(frozen=True, eq=False)
class PageUpdates:
    """Page-table entries set this step: row `rows[i]` holds page `pages[i]` at index `cols[i]`."""

    rows: IntArray = field(default_factory=lambda: _ints([]))
    cols: IntArray = field(default_factory=lambda: _ints([]))
    pages: IntArray = field(default_factory=lambda: _ints([]))

    def __len__(self) -> int:
        return len(self.pages)

    def __eq__(self, other: object) -> bool:
        return _same_arrays(self, other)

    __hash__ = None  # type: ignore[assignment]

    @staticmethod
    def concat(parts: list[tuple[int, int, list[int]]]) -> PageUpdates:
        """From (row, first index, pages from that index on) triples."""
        if not parts:
            return PageUpdates()
        rows = np.concatenate([np.full(len(pages), row, dtype=np.int64) for row, _, pages in parts])
        cols = np.concatenate([np.arange(first, first + len(pages), dtype=np.int64) for _, first, pages in parts])
        pages = np.concatenate([_ints(pages) for _, _, pages in parts])
        return PageUpdates(rows, cols, pages)


@dataclass(frozen=True, eq=False)
class ForwardBatch:
    """One engine step over several sequences, flattened along the token axis.

    Sequence i lives in request row `rows[i]` and contributes `query_lens[i]` tokens whose
    positions end at `context_lens[i]` (tokens in the KV cache once this step has run).
    `token_ids` holds each query token, or FROM_DEVICE for a single-token row whose input is
    the token its previous step sampled. Positions, K/V slots and attention page lists are
    derived on every rank, not sent.
    """

    rows: IntArray
    token_ids: IntArray
    query_lens: IntArray
    context_lens: IntArray
    sample: npt.NDArray[np.bool_]  # whether sequence i's last token produces a next token this step
    page_updates: PageUpdates = field(default_factory=PageUpdates)
    # Per row, how many of its first query tokens also need their logits (prompt log-probabilities).
    prompt_logits: IntArray = field(default_factory=lambda: _ints([]))

    @staticmethod
    def make(
        rows: object,
        token_ids: object,
        query_lens: object,
        context_lens: object,
        sample: object,
        page_updates: PageUpdates | None = None,
        prompt_logits: object = None,
    ) -> ForwardBatch:
        query = _ints(query_lens)
        return ForwardBatch(
            rows=_ints(rows),
            token_ids=_ints(token_ids),
            query_lens=query,
            context_lens=_ints(context_lens),
            sample=np.asarray(sample, dtype=np.bool_).reshape(-1),
            page_updates=page_updates or PageUpdates(),
            prompt_logits=np.zeros_like(query) if prompt_logits is None else _ints(prompt_logits),
        )

    @staticmethod
    def fresh(
        token_ids: list[int],
        query_lens: list[int],
        context_lens: list[int],
        page_tables: list[list[int]],
        sample: list[bool],
    ) -> ForwardBatch:
        """A self-contained step (tests, benchmarks): rows 0..n-1 with their whole page tables."""
        updates = PageUpdates.concat([(row, 0, table) for row, table in enumerate(page_tables)])
        return ForwardBatch.make(range(len(query_lens)), token_ids, query_lens, context_lens, sample, updates)

    def __eq__(self, other: object) -> bool:
        return _same_arrays(self, other)

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        return bool(np.all(self.query_lens == 1))

    @property
    def num_sampled(self) -> int:
        return int(self.sample.sum())

    def positions(self) -> IntArray:
        """Position of every query token."""
        starts = self.context_lens - self.query_lens
        if self.is_decode_only:
            return starts
        first_token = np.cumsum(self.query_lens) - self.query_lens
        offsets = np.arange(self.num_tokens, dtype=np.int64) - np.repeat(first_token, self.query_lens)
        return np.repeat(starts, self.query_lens) + offsets

    def token_rows(self) -> IntArray:
        """Request row of every query token."""
        return self.rows if self.is_decode_only else np.repeat(self.rows, self.query_lens)

    def sample_token_indices(self) -> IntArray:
        """Index, in the flattened token axis, of the last token of each sampling sequence."""
        return (np.cumsum(self.query_lens) - 1)[self.sample]

    @property
    def num_prompt_logits(self) -> int:
        return int(self.prompt_logits.sum())

    def logit_token_indices(self) -> IntArray:
        """The tokens whose logits the step returns: every sampling row's last, then the prompt rows'."""
        sampled = self.sample_token_indices()
        if not self.num_prompt_logits:
            return sampled
        extra = self.prompt_logits
        first_token = np.cumsum(self.query_lens) - self.query_lens
        first_extra = np.cumsum(extra) - extra
        offsets = np.arange(self.num_prompt_logits, dtype=np.int64) - np.repeat(first_extra, extra)
        return np.concatenate([sampled, np.repeat(first_token, extra) + offsets])

    def sampled_rows(self) -> IntArray:
        return self.rows[self.sample]


@dataclass(frozen=True)
class StepInputs:
    """What one rank's forward pass and attention read, derived from a ForwardBatch.

    Host arrays are what kernel planners need on the host (flashinfer plans there); the rest
    are device tensors, built with a handful of tensor operations per step.
    """

    plan: ForwardBatch
    token_ids: torch.Tensor  # [tokens]
    positions: torch.Tensor  # [tokens]
    slots: torch.Tensor  # [tokens, 2]: K row and V row of each token in the cache's flat view
    sample_indices: torch.Tensor  # [sampled]
    kv_indices: torch.Tensor  # [sum of pages]: every sequence's context pages, in order
    kv_indptr: IntArray  # [seqs + 1]: where each sequence's pages start in kv_indices
    kv_last_page_len: IntArray  # [seqs]
    qo_indptr: IntArray  # [seqs + 1]: where each sequence's query tokens start

    @property
    def is_decode_only(self) -> bool:
        return self.plan.is_decode_only

    @property
    def num_seqs(self) -> int:
        return self.plan.num_seqs
