"""One upstream at run time: its compiled settings (per config) and its live parts (kept across reloads).

A reload builds new `LiveUpstream` objects and swaps the routing table in one assignment; a request keeps
the `LiveUpstream` it started with, so its timeouts and fallbacks never change under it. What must survive
a reload lives in `LiveParts`, one per upstream name: the breaker (reconfigured in place when its
settings change, which keeps state and counters as `Breaker.reconfigure` documents), the counters,
the bulkhead (resized in place, so requests in flight keep their slots), the retry budget and the
response cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from breakwater.api.plain.sidecar import FallbackKind, PlainSidecarConfig, PlainUpstreamConfig
from breakwater.breaker import Breaker, Transition
from breakwater.proxy.budget import RetryBudget
from breakwater.proxy.bulkhead import BulkheadSemaphore
from breakwater.proxy.cache import ResponseCache
from breakwater.proxy.classifiers import FailurePolicy, RetryPolicy
from breakwater.proxy.modeclock import applied_mode
from breakwater.proxy.stats import UpstreamStats

__all__ = ["LiveParts", "LiveUpstream", "RouteTable", "StaticResponse", "authority_aliases"]


@dataclass(frozen=True, slots=True)
class StaticResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(slots=True)
class LiveParts:
    """The parts of an upstream that outlive a config: one per upstream name."""

    breaker: Breaker
    policy: str = ""
    stats: UpstreamStats = field(default_factory=UpstreamStats)
    bulkhead: BulkheadSemaphore | None = None
    budget: RetryBudget | None = None
    cache: ResponseCache | None = None

    @classmethod
    def create(
        cls,
        config: PlainUpstreamConfig,
        *,
        clock: Callable[[], float],
        on_transition: Callable[[Transition], None],
    ) -> LiveParts:
        mode = applied_mode(config, None, time.time())
        breaker = Breaker(config.name, config.breaker, mode=mode, clock=clock, on_transition=on_transition)
        parts = cls(breaker=breaker)
        parts.update(config, clock=clock)
        return parts

    def update(self, config: PlainUpstreamConfig, *, clock: Callable[[], float]) -> None:
        """Adopt a new config for the same upstream name, keeping whatever still applies."""
        self.policy = config.policy
        mode = applied_mode(config, self.breaker, time.time())
        if (self.breaker.settings, self.breaker.mode) != (config.breaker, mode):
            self.breaker.reconfigure(config.breaker, mode)
        bh = config.bulkhead
        if bh.max_concurrent is None:
            self.bulkhead = None
        elif self.bulkhead is None:
            self.bulkhead = BulkheadSemaphore(bh.max_concurrent, bh.max_pending)
        elif self.bulkhead.limits != (bh.max_concurrent, bh.max_pending):
            self.bulkhead.resize(bh.max_concurrent, bh.max_pending)
        retry = config.retry
        if retry.attempts > 1 and retry.budget_percent > 0:
            if self.budget is None:
                self.budget = RetryBudget(retry.budget_percent, clock=clock)
            else:
                self.budget.percent = retry.budget_percent
        else:
            self.budget = None
        fb = config.fallback
        if fb.kind is FallbackKind.CACHED:
            if self.cache is None:
                self.cache = ResponseCache(
                    max_entries=fb.max_entries,
                    max_bytes=fb.max_bytes,
                    max_age=fb.max_age_seconds,
                    clock=clock,
                )
            else:
                self.cache.resize(
                    max_entries=fb.max_entries, max_bytes=fb.max_bytes, max_age=fb.max_age_seconds
                )
        else:
            self.cache = None


class LiveUpstream:
    """Everything the forwarding path needs about one upstream, for one config generation."""

    __slots__ = (
        "breaker",
        "budget",
        "bulkhead",
        "cache",
        "config",
        "failures",
        "full_path",
        "host",
        "host_header",
        "host_line",
        "name",
        "origin",
        "per_try_timeout",
        "policy",
        "port",
        "retry",
        "static_fallback",
        "stats",
        "timeout",
    )

    def __init__(self, config: PlainUpstreamConfig, parts: LiveParts) -> None:
        self.config = config
        self.name = config.name
        self.policy = config.policy
        self.host = config.host
        self.port = config.port
        bracketed = f"[{config.host}]" if ":" in config.host else config.host
        self.origin = f"http://{bracketed}:{config.port}"
        self.host_header = bracketed if config.port == 80 else f"{bracketed}:{config.port}"
        self.host_line = f"Host: {self.host_header}\r\n".encode("ascii", "surrogateescape")
        # The whole call's deadline, retries included; each try may be bounded tighter.
        self.timeout = config.timeout_seconds
        self.per_try_timeout = config.retry.per_try_timeout_seconds
        self.full_path: object | None = None  # what the full path caches per upstream (see full/)
        self.failures = FailurePolicy.from_config(config.failures)
        self.retry = RetryPolicy.from_config(config.retry)
        self.breaker = parts.breaker
        self.stats = parts.stats
        self.bulkhead = parts.bulkhead
        self.budget = parts.budget
        self.cache = parts.cache
        fb = config.fallback
        self.static_fallback: StaticResponse | None = None
        if fb.kind is FallbackKind.STATIC:
            self.static_fallback = StaticResponse(
                status=fb.status, headers=tuple(fb.headers.items()), body=fb.body.encode()
            )

    @property
    def fallback_kind(self) -> str:
        return self.config.fallback.kind


def authority_aliases(host: str, port: int) -> list[tuple[str, int]]:
    """The (host, port) pairs a forward-proxy request may use to mean this upstream.

    The host itself, and for in-cluster Service names (``name.ns.svc.<domain>``) the shorter forms a
    pod's DNS search path resolves: ``name.ns`` and ``name.ns.svc``. (The bare ``name`` is not an alias:
    it means a different Service in every namespace.)
    """
    aliases = [(host, port)]
    labels = host.split(".")
    if len(labels) >= 3 and labels[2] == "svc" and not host.replace(".", "").isdigit():
        aliases.append((".".join(labels[:2]), port))
        aliases.append((".".join(labels[:3]), port))
    return list(dict.fromkeys(aliases))


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The routing state of one config: swapped in one assignment on reload."""

    config: PlainSidecarConfig
    config_hash: str
    by_name: dict[str, LiveUpstream]
    by_authority: dict[tuple[str, int], LiveUpstream]
    refuse_unknown: bool
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def empty(cls) -> RouteTable:
        return cls(
            config=PlainSidecarConfig(), config_hash="", by_name={}, by_authority={}, refuse_unknown=False
        )

    @classmethod
    def build(cls, config: PlainSidecarConfig, upstreams: dict[str, LiveUpstream]) -> RouteTable:
        by_authority: dict[tuple[str, int], LiveUpstream] = {}
        for up in upstreams.values():
            for alias in authority_aliases(up.host, up.port):
                by_authority.setdefault(alias, up)
        return cls(
            config=config,
            config_hash=config.effective_hash(),
            by_name=upstreams,
            by_authority=by_authority,
            refuse_unknown=config.forward_proxy.unknown_hosts == "Refuse",
        )
