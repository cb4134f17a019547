"""Model directories for benchmarks: a model shape (bench/shapes/*.json) with no weights."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

SHAPES = Path(__file__).parent / "shapes"


@contextlib.contextmanager
def shape_model_dir(shape: Path) -> Iterator[Path]:
    """A temporary directory holding `shape` as its config.json (load with --load-format dummy)."""
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copy(shape, Path(scratch) / "config.json")
        yield Path(scratch)
