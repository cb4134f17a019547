"""Load this rank's slices straight from safetensors files, or fill random weights (dummy format).

Reading goes through `safe_open(...).get_slice`, which maps the file and copies only the
requested rows/columns: no rank ever materialises a full copy of a sharded tensor.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from ..core.errors import ConfigError
from ..layers.weight_spec import WeightSpec

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


def checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Map each tensor name to the file that holds it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"--model {model_dir}: no *.safetensors weights in the directory")
    names: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                names[name] = file
    return names


# Tensors a checkpoint may carry that no parameter needs: rotary tables older exports saved, and
# the LM head a tied checkpoint stores anyway (it is the embedding).
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)
TIED_HEAD = "lm_head.weight"


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def load_safetensors(specs: list[WeightSpec], model_dir: Path, progress: ProgressCallback | None = None) -> None:
    where = checkpoint_files(model_dir)
    wanted = {spec.name for spec in specs}
    missing = sorted(wanted - set(where))
    if missing:
        raise ConfigError(f"--model {model_dir}: checkpoint lacks tensors {_shown(missing)}")
    unused = sorted(name for name in set(where) - wanted if not name.endswith(IGNORABLE_SUFFIXES) and name != TIED_HEAD)
    if unused:
        raise ConfigError(
            f"--model {model_dir}: checkpoint tensors {_shown(unused)} are not used by the model "
            "(a feature of the architecture tpserve does not implement?)"
        )
    by_file: dict[Path, list[WeightSpec]] = {}
    for spec in specs:
        by_file.setdefault(where[spec.name], []).append(spec)
    done = 0
    for file, file_specs in by_file.items():
        with safe_open(str(file), framework="pt") as handle:
            for spec in file_specs:
                _copy_slice(handle.get_slice(spec.name), spec)
                done += 1
                if progress is not None:
                    progress(done, len(specs))


def _copy_slice(tensor_slice: object, spec: WeightSpec) -> None:
    shape = tuple(tensor_slice.get_shape())  # type: ignore[attr-defined]
    if spec.dim is None:
        data = tensor_slice[:]  # type: ignore[index]
    elif spec.dim == 0:
        data = tensor_slice[spec.start : spec.start + spec.length]  # type: ignore[index]
    else:
        data = tensor_slice[:, spec.start : spec.start + spec.length]  # type: ignore[index]
    if tuple(data.shape) != tuple(spec.target.shape):
        raise ConfigError(
            f"tensor {spec.name}: checkpoint shape {list(shape)} does not match the config "
            f"(this rank expects a slice of shape {list(spec.target.shape)})"
        )
    spec.target.copy_(data)


def fill_dummy(specs: list[WeightSpec], seed: int = 0) -> None:
    """Random weights of the right shapes, for benchmarks at real model sizes without files."""
    generators: dict[torch.device, torch.Generator] = {}
    for spec in specs:
        if spec.name.endswith("norm.weight"):
            spec.target.fill_(1.0)
            continue
        device = spec.target.device
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        # Drawn on the device itself: filling billions of parameters from the CPU is slow.
        spec.target.normal_(0.0, 0.02, generator=generators[device])


class LoadProgress:
    """Logs weight-loading progress at most every few seconds and at the end."""

    def __init__(self, rank: int, interval_s: float = 5.0) -> None:
        self.rank = rank
        self.interval_s = interval_s
        self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last >= self.interval_s:
            self._last = now
            log.info("rank %d: loaded %d/%d weight tensors (%.0f%%)", self.rank, done, total, 100 * done / total)
