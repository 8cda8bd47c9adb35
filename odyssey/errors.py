"""The errors users see. Each carries one message that names the problem and the valid choices;
the CLI prints it without a stack trace."""


class OdysseyError(Exception):
    """Base class: an error the CLI reports as one line, exit code ``exit_code`` (2: bad input)."""

    exit_code = 2


class ConfigError(OdysseyError, ValueError):
    """A config key, value or combination is invalid (raised before any training starts)."""


class DataError(OdysseyError, ValueError):
    """A data file is missing, truncated, tampered with or malformed."""


class NotFoundError(OdysseyError, LookupError):
    """Something named that should exist does not (a tracking store, a study); the message says
    what exists."""


class ServiceError(OdysseyError, RuntimeError):
    """A service (MLflow tracking server, Ray cluster, job server) cannot be reached or refused."""


def require(ok: bool, key: str, value: object, valid: str) -> None:
    """Raise ``ConfigError("key=value is invalid: expected valid")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {valid}")
