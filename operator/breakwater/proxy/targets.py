"""Where a forward-proxy request goes: its request target parsed, routed to an upstream, or refused.

One `ForwardRouter` per sidecar serves both paths, so the counters, the pass-through breaker-less
upstreams and every refusal are the same whichever path parsed the request.

- Absolute-form targets (``GET http://payments.shop:8080/x HTTP/1.1``) are routed by host and port to
  the matching upstream (its name, or for a ``*.svc.<domain>`` name the shorter ``name.ns`` /
  ``name.ns.svc`` forms). The request sent upstream carries the target's authority as its ``Host``
  (RFC 9112 section 3.2.2), whatever ``Host`` the client sent.
- Only ``http`` is proxied: an ``https://`` target is refused (400 ``unsupported-scheme``), never sent
  on in clear text; TLS goes through ``CONNECT``. A target with userinfo is refused too.
- Unknown targets pass through unprotected (no breaker, counted) or are refused with 403
  (``forwardProxy.unknownHosts``); a target that is this proxy itself gets 508.
- Origin-form requests (a client talking to the proxy port as if it were a server) get 400.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from breakwater.api.plain.sidecar import PlainUpstreamConfig
from breakwater.breaker import Mode
from breakwater.proxy.answers import Answer, plain
from breakwater.proxy.upstream import LiveParts, LiveUpstream, RouteTable

__all__ = ["PASSTHROUGH_TIMEOUT", "ForwardProxyStats", "ForwardRouter", "ForwardTarget", "parse_absolute"]

PASSTHROUGH_TIMEOUT: Final = 60.0
"""The deadline of a request to an unknown (unprotected) upstream, and of any tunnel's connect."""
_PASSTHROUGH_CACHE: Final = 256


class ForwardProxyStats:
    __slots__ = ("bad_requests", "passthrough", "refused", "tunnels_active", "tunnels_total")

    def __init__(self) -> None:
        self.passthrough = 0
        self.refused = 0
        self.bad_requests = 0
        self.tunnels_total = 0
        self.tunnels_active = 0

    def to_json(self) -> dict[str, int]:
        return {
            "passThrough": self.passthrough,
            "refused": self.refused,
            "badRequests": self.bad_requests,
            "tunnelsTotal": self.tunnels_total,
            "tunnelsActive": self.tunnels_active,
        }


class ForwardTarget:
    """An absolute-form target: where it goes and what the upstream request carries."""

    __slots__ = ("authority", "host", "path_qs", "port")

    def __init__(self, host: str, port: int, authority: str, path_qs: str) -> None:
        self.host = host
        self.port = port
        self.authority = authority
        self.path_qs = path_qs


def split_authority(authority: str, default_port: int | None) -> tuple[str, int] | None:
    """``host[:port]`` (IPv6 in brackets) as a normalised (host, port); None when malformed."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
    host = host.rstrip(".").lower()
    if not host or any(c in host for c in " \t/\\@"):
        return None
    if not port_text:
        if default_port is None:
            return None
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def parse_absolute(target: str) -> ForwardTarget | Answer:
    """The absolute-form request target `target`, or the answer that refuses it."""
    scheme, sep, rest = target.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha():
        return plain(400, "not-a-proxy-request", "this is a forward proxy: send absolute-form requests\n")
    if scheme.lower() != "http":
        return plain(400, "unsupported-scheme", f"{scheme.lower()!r} is not proxied; use CONNECT for TLS\n")
    end = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority, path_qs = rest[:end], rest[end:]
    if "@" in authority:
        return plain(400, "bad-target", "credentials in the request target are not forwarded\n")
    parts = split_authority(authority, 80)
    if parts is None:
        return plain(400, "bad-target", f"cannot proxy to {authority!r}\n")
    path_qs = path_qs.partition("#")[0]
    if not path_qs.startswith("/"):
        path_qs = "/" + path_qs
    return ForwardTarget(parts[0], parts[1], authority, path_qs)


class ForwardRouter:
    """Routes forward-proxy targets to upstreams; reads the current `RouteTable` on each request."""

    def __init__(
        self,
        *,
        routes: Callable[[], RouteTable],
        clock: Callable[[], float],
        own_address: Callable[[], tuple[str, int] | None],
    ) -> None:
        self._routes = routes
        self._own_address = own_address
        self.stats = ForwardProxyStats()
        self._passthrough_parts = LiveParts.create(
            _passthrough_config("passthrough.invalid", 80), clock=clock, on_transition=lambda t: None
        )
        self._passthrough: OrderedDict[tuple[str, int], LiveUpstream] = OrderedDict()

    def route(self, host: str, port: int) -> LiveUpstream | Answer:
        """The upstream for (host, port): a configured one, a pass-through one, or a refusal."""
        routes = self._routes()
        up = routes.by_authority.get((host, port))
        if up is not None:
            return up
        if routes.refuse_unknown:
            self.stats.refused += 1
            return plain(403, "refused", f"{host}:{port} is not a configured upstream\n")
        if self.is_self(host, port):
            self.stats.bad_requests += 1
            return plain(508, "loop", "the request targets this proxy itself\n")
        self.stats.passthrough += 1
        return self.passthrough_upstream(host, port)

    def bad_request(self, answer: Answer) -> Answer:
        self.stats.bad_requests += 1
        return answer

    def is_self(self, host: str, port: int) -> bool:
        own = self._own_address()
        if own is None:
            return False
        address, own_port = own
        return port == own_port and host in {address, "localhost", "127.0.0.1", "::1"}

    def passthrough_upstream(self, host: str, port: int) -> LiveUpstream:
        key = (host, port)
        up = self._passthrough.get(key)
        if up is None:
            up = LiveUpstream(_passthrough_config(host, port), self._passthrough_parts)
            self._passthrough[key] = up
            if len(self._passthrough) > _PASSTHROUGH_CACHE:
                self._passthrough.popitem(last=False)
        else:
            self._passthrough.move_to_end(key)
        return up


def _passthrough_config(host: str, port: int) -> PlainUpstreamConfig:
    return PlainUpstreamConfig(
        name="passthrough", host=host, port=port, mode=Mode.DISABLED, timeout_seconds=PASSTHROUGH_TIMEOUT
    )
