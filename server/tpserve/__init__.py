"""tpserve: tensor-parallel LLM inference."""

from .core.errors import ConfigError
from .engine.config import EngineConfig
from .engine.launcher import EngineError
from .engine.llm import LLM, Completion
from .engine.sampling import SamplingParams
from .engine.scheduler import RequestError
from .models.config import ModelConfig

__all__ = [
    "LLM",
    "Completion",
    "ConfigError",
    "EngineConfig",
    "EngineError",
    "ModelConfig",
    "RequestError",
    "SamplingParams",
]
