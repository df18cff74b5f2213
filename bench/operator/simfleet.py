"""Simulated sidecars: the report channel's client side (sessions, signed datagrams, config fetches)
for thousands of pods in one process.

Everything talks to 127.0.0.0/8 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from apiclient import Api, gather_limited, running_injected

from breakwater.api import datagram

# -- simulated sidecars ----------------------------------------------------------------------------------


@dataclass
class SimPod:
    """One kwok pod and what a simulated sidecar for it knows and sends."""

    namespace: str
    name: str
    uid: str
    ip: str
    token: str = ""
    policy: str = ""  # namespace/name of the policy that selects it
    upstream: str = "payments"
    state: str = "Closed"
    state_since: float = field(default_factory=time.time)
    trips: int = 0
    calls: int = 0
    failures: int = 0
    seq: int = 0
    config_hash: str = ""
    pending: list[dict[str, Any]] = field(default_factory=list)
    carried_seq: int = -1
    latency: list[int] = field(default_factory=lambda: [0] * 14)  # cumulative, like a real sidecar's

    def transition(self, to_state: str, *, reason: str = "bench") -> float:
        at = time.time()
        self.pending.append(
            {
                "upstream": self.upstream,
                "policy": self.policy,
                "fromState": self.state,
                "toState": to_state,
                "reason": reason,
                "at": at,
            }
        )
        if to_state == "Open":
            self.trips += 1
        self.state, self.state_since = to_state, at
        return at

    def report(self) -> bytes:
        self.seq += 1
        self.calls += 50
        failures = random.randint(0, 5)
        self.failures += failures
        for _ in range(50):
            self.latency[random.choice((3, 4, 4, 5, 5, 6))] += 1  # 5-100 ms
        transitions = self.pending  # kept until an answer to this report arrives, like a real sidecar
        self.carried_seq = self.seq
        return json.dumps(
            {
                "version": 1,
                "namespace": self.namespace,
                "pod": self.name,
                "podUid": self.uid,
                "configHash": self.config_hash,
                "seq": self.seq,
                "sentAt": time.time(),
                "upstreams": [
                    {
                        "name": self.upstream,
                        "policy": self.policy,
                        "state": self.state,
                        "mode": "Enforce",
                        "calls": self.calls,
                        "failures": self.failures,
                        "rejections": 0,
                        "wouldReject": 0,
                        "trips": self.trips,
                        "windowCalls": 50,
                        "failureRate": failures / 50,
                        "slowRate": 0.0,
                        "stateSince": self.state_since,
                        "latency": self.latency,
                    }
                ],
                "transitions": transitions,
            }
        ).encode()


class _SimEndpoint(asyncio.DatagramProtocol):
    def __init__(self, fleet: SimFleet, pod: SimPod) -> None:
        self.fleet, self.pod = fleet, pod

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.fleet.answered(self.pod, data)


@dataclass
class SimFleet:
    """Simulated sidecars speaking the real report channel: a session per pod over HTTPS with its
    pod-bound token, then signed report datagrams from one UDP socket per pod, answered by the operator."""

    url: str
    ca_pem: str
    pods: list[SimPod]
    interval: float = 5.0
    session_concurrency: int = 16
    post_latencies: list[float] = field(default_factory=list)  # report sent -> its answer arrived
    transition_latencies: list[float] = field(default_factory=list)  # transition -> answer arrived
    config_notices: list[tuple[str, float]] = field(default_factory=list)  # (hash, when) unasked answers
    fetch_on_notice: bool = False  # fetch the config when told it changed, as a real sidecar does
    fetched: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> pod -> when it arrived
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _http: aiohttp.ClientSession | None = None
    _wake: dict[str, asyncio.Event] = field(default_factory=dict)
    _keys: dict[str, tuple[str, bytes, asyncio.DatagramTransport]] = field(default_factory=dict)
    _inflight: dict[str, tuple[int, float, float | None]] = field(default_factory=dict)
    _gate: asyncio.Semaphore | None = None
    _stop: bool = False

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem)
        ctx.check_hostname = False  # the serving certificate names 127.0.0.1 as an IP SAN; keep it simple
        return ctx

    def _error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    async def open_session(self, pod: SimPod) -> bool:
        assert self._http is not None
        assert self._gate is not None
        ask = {"namespace": pod.namespace, "pod": pod.name, "podUid": pod.uid}
        headers = {"Authorization": f"Bearer {pod.token}", "Content-Type": "application/json"}
        async with self._gate:
            try:
                url = self.url + datagram.SESSION_PATH
                async with self._http.post(url, data=json.dumps(ask), headers=headers) as r:
                    text = await r.text()
                    if r.status != 200:
                        self._error(f"session http {r.status}")
                        return False
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._error(f"session {type(exc).__name__}")
                return False
        grant = json.loads(text)
        host = urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _SimEndpoint(self, pod), remote_addr=(host, int(grant["port"]))
        )
        old = self._keys.get(pod_key(pod))
        if old is not None:
            old[2].close()
        self._keys[pod_key(pod)] = (grant["session"], base64.b64decode(grant["key"]), transport)
        return True

    def send(self, pod: SimPod) -> None:
        found = self._keys.get(pod_key(pod))
        if found is None:
            return
        session_id, key, transport = found
        first_transition = min((t["at"] for t in pod.pending), default=None)
        body = pod.report()
        transport.sendto(datagram.report_datagram(session_id, key, body))
        self._inflight[pod_key(pod)] = (pod.seq, time.monotonic(), first_transition)
        self.sent += 1

    def answered(self, pod: SimPod, data: bytes) -> None:
        found = self._keys.get(pod_key(pod))
        if found is None:
            return
        try:
            kind, fields = datagram.parse(data)
            if kind == datagram.RENEW:
                self._error("renew asked")
                return
            answer = datagram.open_answer(found[1], fields)
        except (datagram.DatagramError, ValueError):
            self._error("bad answer")
            return
        if answer.seq < 0:
            self.config_notices.append((answer.config_hash, time.monotonic()))
            if self.fetch_on_notice and answer.config_hash and answer.config_hash != pod.config_hash:
                task = asyncio.get_running_loop().create_task(self._fetch_config(pod))
                self._tasks.append(task)
            else:
                pod.config_hash = answer.config_hash or pod.config_hash
            return
        inflight = self._inflight.get(pod_key(pod))
        if inflight is None or inflight[0] != answer.seq:
            return
        del self._inflight[pod_key(pod)]
        self.post_latencies.append(time.monotonic() - inflight[1])
        if inflight[2] is not None:
            self.transition_latencies.append(time.time() - inflight[2])
        if answer.config_hash:
            pod.config_hash = answer.config_hash
        if answer.seq >= pod.carried_seq:
            pod.pending = []

    async def _fetch_config(self, pod: SimPod) -> None:
        """What a sidecar does when told its config changed: GET /v1/config, proven by its session."""
        assert self._http is not None
        params = {"hash": pod.config_hash, "namespace": pod.namespace, "pod": pod.name, "uid": pod.uid}
        session_id, key, _ = self._keys[pod_key(pod)]
        headers = {"Authorization": datagram.session_authorization(session_id, key)}
        try:
            async with self._http.get(self.url + "/v1/config", params=params, headers=headers) as r:
                body = await r.json()
                if r.status != 200:
                    self._error(f"config http {r.status}")
                    return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._error(f"config {type(exc).__name__}")
            return
        pod.config_hash = str(body.get("configHash") or pod.config_hash)
        self.fetched.setdefault(pod.config_hash, {})[pod_key(pod)] = time.monotonic()

    async def _loop(self, pod: SimPod, first_delay: float) -> None:
        wake = self._wake.setdefault(pod_key(pod), asyncio.Event())
        await asyncio.sleep(first_delay)
        while not self._stop:
            if await self.open_session(pod):
                break
            await asyncio.sleep(2)  # a retry delay
        while not self._stop:
            self.send(pod)
            # Unanswered transitions are sent again after about a second, as the real sidecar does.
            wait = random.uniform(0.5, 1.5) if pod.pending else self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            wake.clear()

    def start(self, pods: Sequence[SimPod] | None = None) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context(), limit=self.session_concurrency),
                timeout=aiohttp.ClientTimeout(total=60),
            )
            self._gate = asyncio.Semaphore(self.session_concurrency)
        for pod in pods if pods is not None else self.pods:
            delay = random.uniform(0, self.interval)  # spread like independently started sidecars
            self._tasks.append(asyncio.create_task(self._loop(pod, delay)))

    def kick(self, pod: SimPod) -> None:
        """Send the pod's report now (a transition), as a real sidecar does."""
        event = self._wake.get(pod_key(pod))
        if event is not None:
            event.set()

    def unanswered(self) -> int:
        return len(self._inflight)

    async def stop(self) -> None:
        self._stop = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for _, _, transport in self._keys.values():
            transport.close()
        self._keys.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None


def pod_key(pod: SimPod) -> str:
    return pod.namespace + "/" + pod.name


async def sim_pods_for(
    api: Api, namespace: str, *, policy_of: dict[str, str], concurrency: int = 32
) -> list[SimPod]:
    """SimPods (with pod-bound tokens) for the running injected pods of a namespace.

    `policy_of` maps the pod's `app` label to the `namespace/name` of the policy that selects it."""
    pods = running_injected(await api.pods(namespace))
    sims = [
        SimPod(
            namespace=namespace,
            name=p["metadata"]["name"],
            uid=p["metadata"]["uid"],
            ip=p["status"]["podIP"],
            policy=policy_of.get(p["metadata"]["labels"].get("app", ""), ""),
        )
        for p in pods
    ]
    tokens = await gather_limited((api.token(s.namespace, s.name, s.uid) for s in sims), concurrency)
    for s, t in zip(sims, tokens, strict=True):
        s.token = t
    return sims
