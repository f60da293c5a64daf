"""The Holt-Winters forecaster against series with known answers."""

from __future__ import annotations

import math

import pytest

from shardroute.errors import ConfigError
from shardroute.scaling import HoltWinters


def _series(t: int, m: int) -> float:
    return 100 + 0.5 * t + 20 * math.sin(2 * math.pi * t / m)


def test_seasonal_series_with_trend_is_forecast_exactly() -> None:
    m = 24
    model = HoltWinters(m)
    for t in range(5 * m):
        model = model.updated(_series(t, m))
    assert model.seasonal
    now = 5 * m
    for h in (1, 6, 12, 24, 36):
        assert model.forecast(h) == pytest.approx(_series(now + h - 1, m), abs=0.01)
    assert model.peak(12) == pytest.approx(max(_series(now + k, m) for k in range(12)), abs=0.01)
    assert model.error < 0.05


def test_noisy_seasonal_series_forecast_within_a_few_percent() -> None:
    import random

    rng = random.Random(7)
    m = 48
    model = HoltWinters(m)
    for t in range(6 * m):
        model = model.updated(_series(t, m) + rng.gauss(0, 2))
    now = 6 * m
    for h in (1, 12, 24):
        truth = _series(now + h - 1, m)
        assert abs(model.forecast(h) - truth) / truth < 0.03


def test_before_two_seasons_it_is_holts_linear_method() -> None:
    model = HoltWinters(100)
    for t in range(50):
        model = model.updated(10.0 + 2.0 * t)
    assert not model.seasonal
    assert model.forecast(10) == pytest.approx(10.0 + 2.0 * 59, rel=0.05)
    assert model.peak(3) >= model.forecast(1)


def test_a_value_and_bad_arguments() -> None:
    model = HoltWinters(4)
    assert model.updated(5.0) is not model and model.count == 0
    with pytest.raises(ConfigError):
        HoltWinters(1)
    with pytest.raises(ConfigError):
        HoltWinters(4, alpha=0.0)
    with pytest.raises(ConfigError):
        model.forecast(0)
