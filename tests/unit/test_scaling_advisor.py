"""The scaling policies and the advisor: pure, driven by hand-made fleet signals."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardroute.errors import ConfigError
from shardroute.model import ShardState
from shardroute.scaling import (
    CapacityClass,
    CostAwarePolicy,
    FleetSignals,
    LatencyPolicy,
    PredictivePolicy,
    QueuePolicy,
    ScalingAdvice,
    ScalingAdvisor,
    ShardSignals,
    SignalHistory,
    SpillPolicy,
    UtilisationPolicy,
)
from shardroute.scaling.signals import RouterSignals


def fleet(
    ts: float,
    n: int,
    *,
    inflight: int = 0,
    queue: int = 0,
    p95: float = 10.0,
    zones: Sequence[str] = ("a", "b"),
    rate: float = 0.0,
    costs: Sequence[float] = (),
    sessions: Sequence[int] = (),
) -> FleetSignals:
    """``n`` active shards of capacity 10, each with the same load."""
    return FleetSignals(
        ts,
        tuple(
            ShardSignals(
                f"s{i}",
                zones[i % len(zones)],
                ShardState.ACTIVE,
                10,
                cost_per_hour=costs[i] if i < len(costs) else 1.0,
                inflight=inflight,
                queue_depth=queue,
                sessions=sessions[i] if i < len(sessions) else 5,
                latency_ms_p95=p95,
                ts=ts,
                rate=rate / n if n else 0.0,
                reported=True,
            )
            for i in range(n)
        ),
    )


def history(*samples: FleetSignals, step_s: float = 60.0) -> SignalHistory:
    h = SignalHistory(step_s=step_s, season_s=step_s * 24)
    for sample in samples:
        h = h.appended(sample)
    return h


def test_utilisation_is_the_hpa_formula_with_its_tolerance() -> None:
    policy = UtilisationPolicy(target=0.5)
    assert policy.vote(history(fleet(0, 4, inflight=9)), 4).desired == 8  # 0.9 / 0.5
    assert policy.vote(history(fleet(0, 4, inflight=1)), 4).desired == 1
    hold = policy.vote(history(fleet(0, 4, inflight=5)), 4)
    assert hold.desired == 4 and "within" in hold.reason
    assert policy.vote(history(fleet(0, 4, inflight=5)), 0).desired is None


def test_queue_scales_up_in_proportion_and_never_votes_down() -> None:
    policy = QueuePolicy(target_per_shard=2)
    up = policy.vote(history(fleet(0, 4, queue=5)), 4)
    assert up.desired == 10 and "queue 5.0/shard" in up.reason  # ceil(4 * 2.5)
    assert policy.vote(history(fleet(0, 4, queue=2)), 4).desired is None
    assert policy.vote(history(fleet(0, 4, queue=0)), 4).desired is None


def test_latency_needs_n_consecutive_intervals_over_the_slo() -> None:
    policy = LatencyPolicy(slo_ms=100, intervals=3, quiet_s=120)
    over = [fleet(t, 4, p95=150) for t in (0, 10, 20)]
    assert policy.vote(history(*over[:2]), 4).desired == 4  # two: holds only
    vote = policy.vote(history(*over), 4)
    assert vote.desired == 6 and "3 intervals" in vote.reason  # ceil(4 * 1.5)
    blip = [fleet(0, 4, p95=150), fleet(10, 4, p95=80), fleet(20, 4, p95=150)]
    assert policy.vote(history(*blip), 4).desired == 4
    far = policy.vote(history(*[fleet(t, 4, p95=100 * 0.4) for t in range(0, 200, 20)]), 4)
    assert far.desired is None and "scale-down allowed" in far.reason
    near = policy.vote(history(*[fleet(t, 4, p95=70) for t in range(0, 200, 20)]), 4)
    assert near.desired == 4
    short = policy.vote(history(fleet(0, 4, p95=1), fleet(60, 4, p95=1)), 4)
    assert short.desired == 4  # not quiet for the whole window yet


def test_cost_aware_scales_down_only_after_a_quiet_window() -> None:
    policy = CostAwarePolicy(low_water=0.3, target=0.6, window_s=300)
    quiet = [fleet(t, 6, inflight=1) for t in range(0, 400, 60)]
    vote = policy.vote(history(*quiet), 6)
    assert vote.desired == 1 and "under 30%" in vote.reason  # ceil(6 * 0.1 / 0.6)
    busy = [*quiet[:-1], fleet(400, 6, inflight=4)]
    assert policy.vote(history(*busy), 6).desired is None
    assert policy.vote(history(*quiet[:3]), 6).desired is None  # window not covered


def test_predictive_scales_up_before_the_forecast_peak() -> None:
    step = 60.0
    samples = [fleet(t * step, 2, inflight=2, rate=10.0 + 5.0 * t) for t in range(10)]
    policy = PredictivePolicy(horizon_s=180, per_shard_rate=20.0, target=0.5)
    vote = policy.vote(history(*samples), 2)
    # The rate grows 5/s per minute: 55 now, 70 three minutes ahead -> 7 shards at 10/s.
    assert vote.desired == 7
    assert "Holt" in vote.reason and "within 180 s" in vote.reason
    assert policy.vote(history(samples[0]), 2).desired is None
    estimated = PredictivePolicy(horizon_s=60, target=1.0).vote(history(*samples), 2)
    # Little's law: 55 calls/s over 4 in flight of 20 capacity -> 137.5 calls/s at full.
    assert estimated.desired == 1 and "(estimated)" in estimated.reason


def test_predictive_falls_back_to_the_observed_rate_when_the_forecast_misses_a_jump() -> None:
    step = 60.0
    steady = [fleet(t * step, 5, inflight=5, rate=50.0) for t in range(10)]
    jump = fleet(10 * step, 5, inflight=10, rate=80.0)  # a burst no history showed
    policy = PredictivePolicy(horizon_s=120, per_shard_rate=20.0, target=0.5)
    calm = policy.vote(history(*steady), 5)
    assert calm.desired == 5 and "forecasts a peak of 50.0" in calm.reason  # no miss so far
    vote = policy.vote(history(*steady, jump), 5)
    # the forecaster moved only part way (level 59); the fallback sizes for 80 calls/s
    assert vote.desired == 8 and "observed 80.0 calls/s" in vote.reason
    assert "reactive fallback" in vote.reason
    off = PredictivePolicy(horizon_s=120, per_shard_rate=20.0, target=0.5, surprise_errors=None)
    lagging = off.vote(history(*steady, jump), 5)
    assert lagging.desired is not None and lagging.desired < 8 and "forecasts" in lagging.reason
    with pytest.raises(ConfigError, match="surprise_errors"):
        PredictivePolicy(surprise_errors=-1.0).vote(history(*steady), 5)


def test_spill_policy_reads_the_router_side_signals() -> None:
    policy = SpillPolicy(max_share=0.25, intervals=2, min_calls=10)

    def with_router(ts: float, calls: int, spills: int) -> FleetSignals:
        router = RouterSignals({}, calls, spills / calls if calls else 0.0)
        return FleetSignals(ts, fleet(ts, 3).shards, router=router)

    hot = [with_router(0, 100, 40), with_router(10, 100, 30)]
    vote = policy.vote(history(*hot), 3)
    assert vote.desired == 4 and "one more shard" in vote.reason
    assert policy.vote(history(hot[0], with_router(10, 100, 10)), 3).desired is None
    assert policy.vote(history(hot[0], with_router(10, 5, 5)), 3).desired is None  # few calls
    assert policy.vote(history(fleet(0, 3), fleet(10, 3)), 3).desired is None  # no client


def test_votes_combine_by_the_highest_and_every_vote_has_a_reason() -> None:
    advisor = ScalingAdvisor([QueuePolicy(2), UtilisationPolicy(0.5)], max_shards=20)
    advice = advisor.advise(history(fleet(0, 4, inflight=5, queue=6)))
    assert advice.desired_shards == 12 and advice.direction == "up"
    assert len(advice.reasons) >= 2 and all(r for r in advice.reasons)
    assert {v.policy for v in advice.votes} == {"queue", "utilisation"}
    assert advice.to_dict()["desired_shards"] == 12
    assert sum(advice.per_zone.values()) == 12 and advice.per_zone == {"a": 6, "b": 6}
    assert len(advice.additions) == 8


def test_scale_up_is_immediate_and_limited_per_step() -> None:
    advisor = ScalingAdvisor([QueuePolicy(1)], max_shards=100)
    advice = advisor.advise(history(fleet(0, 2, queue=100)))
    assert advice.desired_shards == 8  # ceil(2 * 2) + 4, not 200
    assert any("limited" in r for r in advice.reasons)


def test_stabilisation_prevents_flapping() -> None:
    advisor = ScalingAdvisor([UtilisationPolicy(0.5)], scale_down_window_s=300, max_shards=20)
    h = SignalHistory()
    advice: ScalingAdvice | None = None
    seen = []
    # Load flaps between high and low every 30 s on 8 shards: the advice must not follow it
    # down; it stays at the high recommendation while highs keep coming within the window.
    for i in range(20):
        h = h.appended(fleet(i * 30.0, 8, inflight=5 if i % 2 == 0 else 1))
        advice = advisor.advise(h, advice)
        seen.append(advice.desired_shards)
    assert min(seen) == 8 and not any(a.drain_order for a in [advice] if advice)
    # Quiet for longer than the window: then it goes down, once.
    for i in range(20, 34):
        h = h.appended(fleet(i * 30.0, 8, inflight=1))
        advice = advisor.advise(h, advice)
        seen.append(advice.desired_shards)
    assert seen[-1] == 2 and seen[20:].count(8) == 8  # the last high was at 540 s
    assert advice is not None and len(advice.drain_order) == 6


def test_drains_costliest_then_fewest_sessions_and_keeps_the_zone_minimum() -> None:
    advisor = ScalingAdvisor([UtilisationPolicy(0.5)], min_per_zone=1, scale_down_window_s=0)
    sample = fleet(
        0,
        6,
        inflight=1,
        costs=[1.0, 3.0, 1.0, 1.0, 2.0, 1.0],
        sessions=[9, 9, 1, 4, 9, 2],
    )  # zones: a = s0, s2, s4; b = s1, s3, s5
    advice = advisor.advise(history(sample))
    assert advice.desired_shards == 2
    # s1 (cost 3), s4 (cost 2), then the cheap ones by sessions: s2 (1), s5 (2), but the
    # zone minimum keeps one shard in each zone.
    assert advice.drain_order == ("s1", "s4", "s2", "s5")
    assert advice.per_zone == {"a": 1, "b": 1}


def test_scale_up_prefers_reserved_then_on_demand_then_spot() -> None:
    limits = {CapacityClass.RESERVED: 3, CapacityClass.ON_DEMAND: 2, CapacityClass.SPOT: None}
    advisor = ScalingAdvisor([QueuePolicy(1)], class_limits=limits, max_shards=50)
    advice = advisor.advise(history(fleet(0, 2, queue=3)))  # 2 on-demand now; 6 wanted
    assert [c for _, c in advice.additions] == [
        CapacityClass.RESERVED,
        CapacityClass.RESERVED,
        CapacityClass.RESERVED,
        CapacityClass.SPOT,
    ]


def test_empty_history_and_bad_configuration_are_refused() -> None:
    with pytest.raises(ConfigError):
        ScalingAdvisor([])
    with pytest.raises(ConfigError):
        ScalingAdvisor([QueuePolicy()], min_shards=5, max_shards=4)
    with pytest.raises(ConfigError):
        ScalingAdvisor([QueuePolicy()]).advise(SignalHistory())


@settings(max_examples=100, deadline=None)
@given(
    loads=st.lists(
        st.tuples(
            st.integers(0, 12),
            st.integers(0, 30),
            st.floats(0, 5000),
            st.integers(0, 30),
        ),
        min_size=1,
        max_size=12,
    ),
    min_shards=st.integers(0, 6),
    span=st.integers(0, 10),
    min_per_zone=st.integers(0, 2),
)
def test_advice_stays_within_the_bounds(
    loads: list[tuple[int, int, float, int]], min_shards: int, span: int, min_per_zone: int
) -> None:
    max_shards = max(1, min_shards + span, 2 * min_per_zone)
    advisor = ScalingAdvisor(
        [
            QueuePolicy(2),
            LatencyPolicy(200, intervals=2, quiet_s=60),
            UtilisationPolicy(0.6),
            CostAwarePolicy(window_s=60),
            PredictivePolicy(per_shard_rate=5.0),
        ],
        min_shards=min_shards,
        max_shards=max_shards,
        min_per_zone=min_per_zone,
        scale_down_window_s=90,
    )
    h = SignalHistory(step_s=30.0, season_s=300.0)
    advice = None
    for i, (n, inflight, p95, queue) in enumerate(loads):
        h = h.appended(fleet(i * 30.0, n, inflight=inflight, queue=queue, p95=p95, rate=inflight))
        advice = advisor.advise(h, advice)
        floor = max(min_shards, min_per_zone * len(advice.per_zone))
        assert floor <= advice.desired_shards <= max_shards
        assert all(v >= min_per_zone for v in advice.per_zone.values())
        assert len(advice.drain_order) <= max(0, n - advice.desired_shards)
        assert 0.0 <= advice.confidence <= 1.0
