"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

The holder renews the Lease every `renew_every` seconds; a candidate takes it over once it has not
been renewed for `lease_seconds` (by the candidate's own clock: it notes when it last saw the Lease
change, as client-go does, so clocks need not agree). Every write is a compare-and-swap on the
Lease's resourceVersion, so two candidates never both win. A holder that cannot renew within
`renew_deadline` (two thirds of `lease_seconds`) steps down by itself, before anyone else may take
over. On a graceful stop the holder releases the Lease (an empty holder), so the next one takes over
at once. A holder restarted with the same identity (a container restarted in its pod) renews at once.

The holder also publishes where its report endpoint listens (annotation `breakwater.dev/reports`), so
that the other replicas can forward what sidecars send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from breakwater.api.constants import GROUP

logger = logging.getLogger(__name__)

REPORTS_ANNOTATION = f"{GROUP}/reports"
STOP_WAIT_SECONDS = 10.0


class Requester(Protocol):
    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> dict[str, Any]: ...


def _micro_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseElector:
    api: Requester
    namespace: str
    name: str
    identity: str
    reports_address: str = ""  # host:port of this replica's report endpoint, for the others
    lease_seconds: float = 10.0
    renew_every: float = 2.0
    on_change: Callable[[bool], Awaitable[None]] | None = None  # called with the new leadership
    leader: bool = False
    holder: str = ""  # who holds the Lease as last read ("" while none)
    holder_reports: str = ""  # the holder's report endpoint, as it published it
    _seen: tuple[str, float] = ("", 0.0)  # (the Lease's resourceVersion, when we saw it change)
    _renewed_at: float = 0.0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)  # `run` has returned

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    async def run(self) -> None:
        """Campaign and renew until `stop()`; leadership changes call `on_change`."""
        try:
            while not self._stopping.is_set():
                try:
                    await self._round()
                except Exception as exc:  # the API server is away: keep trying, step down if it lasts
                    logger.warning("leader election (Lease %s/%s): %s", self.namespace, self.name, exc)
                if self.leader and time.monotonic() - self._renewed_at > self.renew_deadline:
                    logger.warning("could not renew the Lease for %.0f s: stepping down", self.renew_deadline)
                    await self._set(False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.renew_every)
        finally:
            self._stopped.set()

    @property
    def renew_deadline(self) -> float:
        """A leader that could not renew for this long steps down: before any other replica may take
        the Lease over (`lease_seconds` after it last saw it change), so two never lead at once."""
        return self.lease_seconds * 2 / 3

    async def stop(self) -> None:
        """Stop campaigning. A leader steps down first (its `on_change(False)` returns once it writes
        nothing more), then releases the Lease, so another replica takes over at once."""
        self._stopping.set()
        with contextlib.suppress(TimeoutError):  # a round in flight could still take the Lease
            await asyncio.wait_for(self._stopped.wait(), STOP_WAIT_SECONDS)
        if self.leader:
            await self._set(False)
        if self.holder == self.identity:  # led, or took the Lease in the round `stop` interrupted
            try:
                lease = await self.api.request("GET", self.path)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") == self.identity:
                    lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
                    await self.api.request("PUT", self.path, lease)
                    logger.info("released the Lease %s/%s", self.namespace, self.name)
            except Exception as exc:
                logger.warning(
                    "could not release the Lease (the next leader waits for it to expire): %s", exc
                )

    async def _round(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        try:
            lease: dict[str, Any] | None = await self.api.request("GET", self.path)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            lease = None
        if lease is None:
            await self._write("POST", self._body(None, now, transitions=0), path=self.path.rsplit("/", 1)[0])
            return
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        version = str(meta.get("resourceVersion", ""))
        if version != self._seen[0]:
            self._seen = (version, time.monotonic())
        self.holder = str(spec.get("holderIdentity") or "")
        self.holder_reports = str((meta.get("annotations") or {}).get(REPORTS_ANNOTATION, ""))
        expired = time.monotonic() - self._seen[1] > float(
            spec.get("leaseDurationSeconds") or self.lease_seconds
        )
        if self.holder == self.identity or not self.holder or expired:
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if self.holder == self.identity else 1)
            await self._write("PUT", self._body(lease, now, transitions=transitions), path=self.path)
        elif self.leader:
            logger.warning("the Lease is held by %s now: stepping down", self.holder)
            await self._set(False)

    def _body(
        self, lease: dict[str, Any] | None, now: datetime.datetime, *, transitions: int
    ) -> dict[str, Any]:
        spec = dict((lease or {}).get("spec") or {})
        taking_over = spec.get("holderIdentity") != self.identity
        spec.update(
            {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_seconds),
                "renewTime": _micro_time(now),
                "leaseTransitions": transitions,
            }
        )
        if taking_over:
            spec["acquireTime"] = _micro_time(now)
        meta = dict((lease or {}).get("metadata") or {"name": self.name, "namespace": self.namespace})
        meta["annotations"] = {**(meta.get("annotations") or {}), REPORTS_ANNOTATION: self.reports_address}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def _write(self, method: str, body: dict[str, Any], *, path: str) -> None:
        try:
            stored = await self.api.request(method, path, body)
        except Exception as exc:
            if getattr(exc, "status", None) == 409:  # another candidate wrote first: read it next round
                return
            raise
        self._seen = (str((stored.get("metadata") or {}).get("resourceVersion", "")), time.monotonic())
        self.holder, self.holder_reports = self.identity, self.reports_address
        if self._stopping.is_set():
            return  # written while stopping: `stop()` releases it without ever leading
        self._renewed_at = time.monotonic()
        await self._set(True)

    async def _set(self, leader: bool) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        logger.info(
            "%s the leader (Lease %s/%s)", "became" if leader else "no longer", self.namespace, self.name
        )
        if self.on_change is not None:
            await self.on_change(leader)
