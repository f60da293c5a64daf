"""Holt-Winters (additive: level, trend, one season) for the request rate. Pure Python, a
value: :meth:`HoltWinters.updated` returns a new forecaster, so a history that holds one
stays immutable.

Until two whole seasons have been seen the model is Holt's linear method (level and trend);
then the season is initialised from those two (the classical start: the trend from the
difference of the two seasons' means, each offset the mean of the two detrended values) and
the usual additive recurrences run::

    level    = alpha (y - s[t-m]) + (1 - alpha)(level + trend)
    trend    = beta (level - level_prev) + (1 - beta) trend
    s[t]     = gamma (y - level) + (1 - gamma) s[t-m]
    y(t + h) = level + h trend + s[t+h-m]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from shardroute.errors import ConfigError

__all__ = ["HoltWinters"]


@dataclass(frozen=True, slots=True)
class HoltWinters:
    """An additive Holt-Winters forecaster with ``season`` observations per season.

    Args:
        season: observations per season (a day of one-minute samples: 1440).
        alpha, beta, gamma: smoothing of level, trend and season, each in (0, 1].
    """

    season: int
    alpha: float = 0.3
    beta: float = 0.02
    gamma: float = 0.2
    level: float = 0.0
    trend: float = 0.0
    seasonals: tuple[float, ...] = ()
    warmup: tuple[float, ...] = ()
    count: int = 0
    error: float = 0.0
    """Exponentially weighted mean absolute error of the one-step forecasts."""

    def __post_init__(self) -> None:
        if self.season < 2:
            raise ConfigError(f"season must be >= 2 observations, got {self.season}")
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")

    @property
    def seasonal(self) -> bool:
        """True once two whole seasons initialised the seasonal offsets."""
        return bool(self.seasonals)

    def updated(self, y: float) -> HoltWinters:
        """The forecaster after observing ``y``."""
        error = self.error
        if self.count:
            miss = abs(y - self.forecast(1))
            error = miss if self.count == 1 else 0.9 * error + 0.1 * miss
        if self.seasonal:
            return self._seasonal_step(y, error)
        level, trend = y, 0.0
        if self.count == 1:  # Holt's usual start: the first difference is the trend
            trend = y - self.level
        elif self.count:
            level = self.alpha * y + (1 - self.alpha) * (self.level + self.trend)
            trend = self.beta * (level - self.level) + (1 - self.beta) * self.trend
        warmup = (*self.warmup, y)
        if len(warmup) < 2 * self.season:
            return replace(
                self, level=level, trend=trend, warmup=warmup, count=self.count + 1, error=error
            )
        level, trend, seasonals = _initial(warmup, self.season)
        return replace(
            self,
            level=level,
            trend=trend,
            seasonals=seasonals,
            warmup=(),
            count=self.count + 1,
            error=error,
        )

    def _seasonal_step(self, y: float, error: float) -> HoltWinters:
        i = self.count % self.season
        old = self.seasonals[i]
        level = self.alpha * (y - old) + (1 - self.alpha) * (self.level + self.trend)
        trend = self.beta * (level - self.level) + (1 - self.beta) * self.trend
        season = self.gamma * (y - level) + (1 - self.gamma) * old
        seasonals = (*self.seasonals[:i], season, *self.seasonals[i + 1 :])
        return replace(
            self,
            level=level,
            trend=trend,
            seasonals=seasonals,
            count=self.count + 1,
            error=error,
        )

    def forecast(self, h: int) -> float:
        """The value expected ``h`` ≥ 1 observations after the last one (0 before any)."""
        if h < 1:
            raise ConfigError(f"h must be >= 1, got {h}")
        value = self.level + h * self.trend
        if self.seasonal:
            value += self.seasonals[(self.count + h - 1) % self.season]
        return value

    def peak(self, h: int) -> float:
        """The largest forecast over the next ``h`` observations (never negative)."""
        return max(0.0, *(self.forecast(k) for k in range(1, max(1, h) + 1)))


def _initial(first: tuple[float, ...], m: int) -> tuple[float, float, tuple[float, ...]]:
    """Level (at the last observation), trend and seasonal offsets from two seasons."""
    mid = (m - 1) / 2
    mean1 = sum(first[:m]) / m
    mean2 = sum(first[m:]) / m
    trend = (mean2 - mean1) / m
    seasonals = tuple(
        (first[i] - mean1 + first[m + i] - mean2) / 2 - trend * (i - mid) for i in range(m)
    )
    return mean2 + trend * mid, trend, seasonals
