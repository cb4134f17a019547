"""tpserve: tensor-parallel LLM inference."""

from .config import ConfigError, EngineConfig, ModelConfig
from .llm import LLM, Completion
from .launcher import EngineError
from .sampling import SamplingParams
from .scheduler import RequestError

__all__ = ["LLM", "Completion", "ConfigError", "EngineConfig", "EngineError", "ModelConfig", "RequestError", "SamplingParams"]
