"""Autoscaling: signals, a pure advisor of composed policies, and acting on its advice
(docs/autoscaling.md).

- :mod:`~shardroute.scaling.signals`: :class:`FleetSignals` (one immutable view of the fleet)
  and :class:`SignalHistory` (a short history plus a request-rate forecaster).
- :mod:`~shardroute.scaling.forecast`: :class:`HoltWinters`.
- :mod:`~shardroute.scaling.policies`: queue, latency SLO, predictive, cost-aware and HPA
  utilisation policies, each returning a :class:`Vote` with its reason.
- :mod:`~shardroute.scaling.advisor`: :class:`ScalingAdvisor` → :class:`ScalingAdvice`.
- :mod:`~shardroute.scaling.autoscaler`: :class:`Actuator`, :func:`reconcile`,
  :class:`Autoscaler`, the ``shardroute_desired_shards`` gauge.
- :mod:`~shardroute.scaling.rebalance`: :func:`plan_moves` (pure) and :class:`Rebalancer`.
"""

from shardroute.scaling.advisor import ScalingAdvice, ScalingAdvisor
from shardroute.scaling.autoscaler import (
    DESIRED_SHARDS_GAUGE,
    FLEET_GAUGES,
    ROUTER_GAUGES,
    Actions,
    Actuator,
    Autoscaler,
    DesiredShardsGauge,
    RebalanceHook,
    reconcile,
)
from shardroute.scaling.forecast import HoltWinters
from shardroute.scaling.policies import (
    CostAwarePolicy,
    LatencyPolicy,
    PredictivePolicy,
    QueuePolicy,
    ScalingPolicy,
    SpillPolicy,
    UtilisationPolicy,
    Vote,
)
from shardroute.scaling.rebalance import (
    HeldSession,
    Move,
    Rebalancer,
    RebalanceResult,
    imbalance,
    plan_moves,
)
from shardroute.scaling.signals import (
    CAPACITY_CLASS_LABEL,
    COST_LABEL,
    CapacityClass,
    FleetSignals,
    RouterSignals,
    ShardSignals,
    SignalHistory,
)

__all__ = [
    "CAPACITY_CLASS_LABEL",
    "COST_LABEL",
    "DESIRED_SHARDS_GAUGE",
    "FLEET_GAUGES",
    "ROUTER_GAUGES",
    "Actions",
    "Actuator",
    "Autoscaler",
    "CapacityClass",
    "CostAwarePolicy",
    "DesiredShardsGauge",
    "FleetSignals",
    "HeldSession",
    "HoltWinters",
    "LatencyPolicy",
    "Move",
    "PredictivePolicy",
    "QueuePolicy",
    "RebalanceHook",
    "RebalanceResult",
    "Rebalancer",
    "RouterSignals",
    "ScalingAdvice",
    "ScalingAdvisor",
    "ScalingPolicy",
    "ShardSignals",
    "SignalHistory",
    "SpillPolicy",
    "UtilisationPolicy",
    "Vote",
    "imbalance",
    "plan_moves",
    "reconcile",
]
