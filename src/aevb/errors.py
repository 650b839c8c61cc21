"""Errors that reach the user as one clear line (never a traceback).

Anything the user can fix (bad data, bad config) raises a subclass of
``AevbError``; the console entry points catch it, print ``error: <message>``
on stderr and exit with status 2.
"""


class AevbError(Exception):
    """A problem the user can fix; its message is the whole explanation."""


class DataError(AevbError):
    """Data missing, corrupt, or not what it should be."""


class ConfigError(AevbError):
    """A configuration value that cannot work."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


def require_positive_int(name: str, value) -> None:
    """Raise ConfigError unless ``value`` is an int > 0 (bool excluded); ``name`` says which setting it is."""
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{name} must be a positive integer, got {value}")
