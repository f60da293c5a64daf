"""The routing policy: the knobs of the router, as one validated immutable value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from shardroute.errors import ConfigError
from shardroute.model import LOAD_REPORT_HEARTBEAT_S

__all__ = [
    "CONFIG_SECTION",
    "DEFAULT_MAX_REPORT_AGE_S",
    "DEFAULT_PRIORITY_CEILINGS",
    "RoutingPolicy",
]

CONFIG_SECTION = "routing"
"""Name of the routing section in the service's etcd config object."""

DEFAULT_PRIORITY_CEILINGS: Mapping[str, float] = MappingProxyType(
    {"batch": 0.7, "standard": 0.9, "critical": 1.0}
)
"""Default share of a shard's capacity each priority class may fill."""


DEFAULT_MAX_REPORT_AGE_S = 3 * LOAD_REPORT_HEARTBEAT_S
"""Default age (s) past which a load report stops counting: three of the shards' report
intervals (a live shard writes at least every ``LOAD_REPORT_HEARTBEAT_S``)."""


def _default_ceilings() -> Mapping[str, float]:
    return DEFAULT_PRIORITY_CEILINGS


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """How the router places sessions. Immutable; build a new one to change it.

    Attributes:
        balance_factor: ``c`` of bounded-load consistent hashing. A shard is full for
            a new request when its load would exceed ``ceil(c * its fair share)``.
            Must be > 1.0. Lower balances better but moves more sessions off home.
        priority_ceilings: for each priority class, the share of a shard's
            ``capacity`` (in (0, 1]) the class may fill. A class not listed is
            rejected by :meth:`Router.route <shardroute.routing.Router.route>`.
        memo_size: most sessions the affinity memo remembers (LRU beyond that).
        memo_ttl_s: seconds an idle session stays pinned in the affinity memo.
        vnodes_per_weight: ring points per unit of shard weight. Changing it
            reshuffles every home; more points balance better and build slower.
        max_fallbacks: most fallback shards a decision lists (>= 0).
        retry_after_s: the ``retry_after_s`` hint of :class:`~shardroute.errors.Overloaded`.
        spill_floor: share of a shard's ``capacity`` (in [0, 1]) under which the balance
            bound never spills a session off its home. Bounded loads alone spill as soon
            as a shard has more than ``c`` times the average, which at low traffic means
            one or two requests; for stateful sessions a spill moves the conversation,
            so small absolute loads stay home. 0 gives the plain algorithm. The priority
            ceilings apply regardless.
        max_report_age_s: seconds after its ``ts`` (by the client's clock) that a load
            report, from etcd or a response trailer, stops counting; a ``ts`` further
            than this ahead of the client's clock does not count either (clock skew).
            Default: 3x the shards' report interval (``LOAD_REPORT_HEARTBEAT_S``).
        shard_bound: shards also check the balance bound for each new session they
            receive, on their exact load, and redirect it when over (docs/routing.md,
            "The bound at the shard"). Read by shards; clients route as before.

    Raises:
        ConfigError: on construction, if a value is out of range.
    """

    balance_factor: float = 1.25
    priority_ceilings: Mapping[str, float] = field(default_factory=_default_ceilings, hash=False)
    memo_size: int = 100_000
    memo_ttl_s: float = 3600.0
    vnodes_per_weight: int = 160
    max_fallbacks: int = 8
    retry_after_s: float = 0.5
    spill_floor: float = 0.1
    max_report_age_s: float = DEFAULT_MAX_REPORT_AGE_S
    shard_bound: bool = False

    def __post_init__(self) -> None:
        c = self.balance_factor
        if not _is_number(c) or not math.isfinite(c) or c <= 1.0:
            raise ConfigError(f"routing: balance_factor must be a number > 1.0, got {c!r}")
        ceilings = self.priority_ceilings
        if not isinstance(ceilings, Mapping) or not ceilings:
            raise ConfigError(
                f"routing: priority_ceilings must be a non-empty object, got {ceilings!r}"
            )
        for name, value in ceilings.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"routing: priority class names must be strings, got {name!r}")
            if not _is_number(value) or not 0.0 < value <= 1.0:
                raise ConfigError(
                    f"routing: priority_ceilings[{name!r}] must be in (0, 1], got {value!r}"
                )
        object.__setattr__(self, "priority_ceilings", MappingProxyType(dict(ceilings)))
        for name in ("memo_size", "vnodes_per_weight"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"routing: {name} must be an integer > 0, got {value!r}")
        if self.vnodes_per_weight > 10_000:
            raise ConfigError(
                f"routing: vnodes_per_weight must be <= 10000, got {self.vnodes_per_weight!r}"
            )
        mf = self.max_fallbacks
        if not isinstance(mf, int) or isinstance(mf, bool) or mf < 0:
            raise ConfigError(f"routing: max_fallbacks must be an integer >= 0, got {mf!r}")
        ttl = self.memo_ttl_s
        if not _is_number(ttl) or not math.isfinite(ttl) or ttl <= 0:
            raise ConfigError(f"routing: memo_ttl_s must be a number > 0, got {ttl!r}")
        ra = self.retry_after_s
        if not _is_number(ra) or not math.isfinite(ra) or ra < 0:
            raise ConfigError(f"routing: retry_after_s must be a number >= 0, got {ra!r}")
        sf = self.spill_floor
        if not _is_number(sf) or not 0.0 <= sf <= 1.0:
            raise ConfigError(f"routing: spill_floor must be a number in [0, 1], got {sf!r}")
        if not isinstance(self.shard_bound, bool):
            raise ConfigError(
                f"routing: shard_bound must be true or false, got {self.shard_bound!r}"
            )
        age = self.max_report_age_s
        if not _is_number(age) or not math.isfinite(age) or age <= 0:
            raise ConfigError(
                f"routing: max_report_age_s must be a number of seconds > 0, got {age!r}; "
                f"the default is {DEFAULT_MAX_REPORT_AGE_S:g} (3x the shards' report interval)"
            )

    @classmethod
    def from_mapping(
        cls, section: Mapping[str, Any], base: RoutingPolicy | None = None
    ) -> RoutingPolicy:
        """Build a policy from the ``routing`` section of the service config.

        Keys not given keep the value of ``base`` (default: the defaults).
        ``priority_ceilings`` is merged into the base's classes, so a config may
        change one class or add a new one without restating the others.

        Raises:
            ConfigError: the section is not an object, has an unknown key, or a value
                is out of range. The message names the key.
        """
        base = base if base is not None else cls()
        if not isinstance(section, Mapping):
            raise ConfigError(f"routing: the section must be a JSON object, got {section!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in section if k not in known)
        if unknown:
            raise ConfigError(
                f"routing: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        changes = dict(section)
        if "priority_ceilings" in changes:
            given = changes["priority_ceilings"]
            if not isinstance(given, Mapping):
                raise ConfigError(f"routing: priority_ceilings must be an object, got {given!r}")
            changes["priority_ceilings"] = {**base.priority_ceilings, **given}
        return replace(base, **changes)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None, base: RoutingPolicy | None = None
    ) -> RoutingPolicy:
        """The policy for a whole service config object (``Topology.config``).

        Reads its ``"routing"`` section; no config or no section gives ``base``
        (default: the defaults). Other sections belong to other layers and are ignored.

        Raises:
            ConfigError: as :meth:`from_mapping`, or if the config is not an object.
        """
        base = base if base is not None else cls()
        if config is None:
            return base
        if not isinstance(config, Mapping):
            raise ConfigError(f"service config must be a JSON object, got {config!r}")
        section = config.get(CONFIG_SECTION)
        if section is None:
            return base
        return cls.from_mapping(section, base)

    def ceiling(self, priority: str) -> float:
        """The capacity share ``priority`` may fill, or ConfigError if the class is unknown."""
        try:
            return self.priority_ceilings[priority]
        except KeyError:
            raise ConfigError(
                f"unknown priority class {priority!r}; known: "
                f"{', '.join(sorted(self.priority_ceilings))}"
            ) from None
