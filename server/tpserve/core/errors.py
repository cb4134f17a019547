"""Errors every layer may raise to the user."""


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names what is wrong."""
