"""Where a model's files are, and the one place that reads its config, tokenizer and weights.

`--model` names a Hugging Face directory (config.json, safetensors, tokenizer files), a GGUF
file, or a directory holding exactly one GGUF file (and no config.json).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..layers.weight_spec import WeightSpec
from .config import ModelConfig
from .weights import ProgressCallback, load_safetensors


@dataclass(frozen=True)
class Checkpoint:
    """A located model: `path` is the HF directory, or the .gguf file itself."""

    path: Path
    is_gguf: bool

    @staticmethod
    def locate(model: str | os.PathLike[str]) -> Checkpoint:
        path = Path(model)
        if path.is_file():
            if path.suffix != ".gguf":
                raise ConfigError(f"--model {model}: a file must be a .gguf checkpoint; otherwise pass its directory")
            return Checkpoint(path, is_gguf=True)
        if not path.is_dir():
            raise ConfigError(f"--model {model}: not a directory")
        if (path / "config.json").is_file():
            return Checkpoint(path, is_gguf=False)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Checkpoint(ggufs[0], is_gguf=True)
        if ggufs:
            names = ", ".join(p.name for p in ggufs)
            raise ConfigError(f"--model {model}: several GGUF files ({names}); pass the one to serve")
        raise ConfigError(f"--model {model}: no config.json in the model directory (and no .gguf file)")

    @property
    def directory(self) -> Path:
        return self.path.parent if self.is_gguf else self.path

    def model_config(self) -> ModelConfig:
        if not self.is_gguf:
            return ModelConfig.from_dir(self.path)
        from .gguf import gguf_config_dict

        return ModelConfig.from_dict(gguf_config_dict(self.path), source=str(self.path))

    def check_weights(self, config: ModelConfig) -> None:
        """The cheap checks, before any rank starts: weight files exist, GGUF types can be read."""
        if self.is_gguf:
            from .gguf import GGUFCheckpoint

            GGUFCheckpoint(self.path, config.head_dim).check_tensor_types()
        elif not any(self.path.glob("*.safetensors")):
            raise ConfigError(f"--model {self.path}: no *.safetensors weights in the directory")

    def load_tokenizer(self, override: str | None = None) -> Any:
        """The tokenizer of `override` (a directory or hub id) if given, else the checkpoint's own."""
        from transformers import AutoTokenizer

        if override is not None:
            return AutoTokenizer.from_pretrained(override)
        if self.is_gguf:
            # Built from the GGUF metadata: vocabulary, merges, special tokens and chat template.
            return AutoTokenizer.from_pretrained(str(self.directory), gguf_file=self.path.name)
        return AutoTokenizer.from_pretrained(str(self.path))

    def load_weights(self, specs: list[WeightSpec], config: ModelConfig, progress: ProgressCallback) -> None:
        if self.is_gguf:
            from .gguf import load_gguf

            load_gguf(specs, self.path, config.head_dim, progress)
        else:
            load_safetensors(specs, self.path, progress)
