"""Errors every layer may raise to the user."""


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names what is wrong."""


class EngineUnavailable(RuntimeError):
    """The engine cannot finish this request: its group failed, the server is draining, or the
    request ran past its time limit. The HTTP layer answers 503 (or an error event mid-stream)."""
