"""Checks of numbers given as configuration (timeouts, grace periods, TTLs): one place,
so that every component refuses the same values with the same clear error."""

from __future__ import annotations

import math

from shardroute.errors import ConfigError

__all__ = ["grace_or", "seconds"]


def seconds(name: str, value: float, *, zero: bool = False) -> float:
    """``value`` if it is a finite number of seconds > 0 (>= 0 with ``zero``), else
    :class:`~shardroute.errors.ConfigError` naming ``name``.

    A plain ``value <= 0`` test lets NaN through (every comparison with NaN is false) and
    infinity too; both would reach a deadline, a lease or a sleep and fail far from here.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return value


def grace_or(grace_s: float | None, default: float) -> float:
    """A grace period given as ``grace_s``: ``default`` when None or <= 0 (the protocol's
    "not set"), else a finite number of seconds (NaN and infinity are refused)."""
    if grace_s is None:
        return default
    if not math.isfinite(grace_s):
        seconds("grace_s", grace_s)  # raises
    return default if grace_s <= 0 else grace_s
