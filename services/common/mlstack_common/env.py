"""Settings from environment variables: the number readers both services use, each refusal one
line that names the variable and the rule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


class SettingsError(ValueError):
    """A setting that cannot be used; its message names the variable and the rule."""


def env_number(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return _env_read(env, name, default, minimum, parse=float, kind="a number")


def env_integer(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    return _env_read(env, name, default, minimum, parse=int, kind="an integer")


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
