"""Settings from environment variables: the readers both services use (numbers, ports, yes-or-no
flags, the log level), each refusal one line that names the variable and the rule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# The highest TCP port. A larger number is no error at bind: the event loop and gRPC take it
# modulo 65536 (70000 listens on 4464) while the log names the number given.
MAX_PORT = 65535
# Python's logging levels by name, as LOG_LEVEL gives them (any case).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class SettingsError(ValueError):
    """A setting that cannot be used; its message names the variable and the rule."""


def env_number(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return _env_read(env, name, default, minimum, parse=float, kind="a number")


def env_integer(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    return _env_read(env, name, default, minimum, parse=int, kind="an integer")


def env_port(env: dict[str, str], name: str, default: int) -> int:
    """A TCP port to listen on, 1 to MAX_PORT."""
    port = env_integer(env, name, default)
    if port > MAX_PORT:
        raise SettingsError(f"{name} must be <= {MAX_PORT}, got {port}")
    return port


def _env_read(
    env: dict[str, str],
    name: str,
    default: Number,
    minimum: Number,
    *,
    parse: Callable[[str], Number],
    kind: str,
) -> Number:
    """`name` parsed, `default` when unset or blank; refused when `parse` fails or the value is
    infinite, NaN or below `minimum`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {raw}")
    return value


def env_flag(env: dict[str, str], name: str, default: bool) -> bool:
    """A yes-or-no setting (1/true/yes/on or 0/false/no/off, any case): `default` when unset or
    blank; any other word is refused rather than taken for one or the other."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, got {env[name].strip()!r}")


def env_log_level(env: dict[str, str], name: str = "LOG_LEVEL") -> str:
    """A logging level's name, lower case: `info` when unset or blank; refused unless one of
    LOG_LEVELS (a level logging does not know would stop the process at its first line)."""
    level = env.get(name, "").strip().lower() or "info"
    if level not in LOG_LEVELS:
        raise SettingsError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {env[name]!r}")
    return level
