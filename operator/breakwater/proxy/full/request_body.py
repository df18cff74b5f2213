"""The client's request body, streamed to the upstream while watching who is slow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

__all__ = ["CONTINUE", "ClientBodyError", "RequestBody"]

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientBodyError(Exception):
    """The client's request body could not be read (it went away, stalled or sent garbage)."""


class RequestBody:
    """The client's request body as an async iterable for the upstream request, watching who is slow.

    A client that has not sent its whole body by the request's deadline fails the request (408): an
    upload that stalls must not hold a request, a bulkhead slot or a breaker permit forever.
    """

    __slots__ = ("_deadline", "_expect", "_request", "done", "error", "reading")

    def __init__(self, request: web.BaseRequest, expect: bool, deadline: float) -> None:
        self._request = request
        self._expect = expect
        self._deadline = deadline
        self.reading = False
        self.done = False
        self.error: BaseException | None = None

    @property
    def client_at_fault(self) -> bool:
        return self.error is not None or self.reading

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._expect:
            self._expect = False
            await self._request.writer.write(CONTINUE)
        content = self._request.content
        while True:
            self.reading = True
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await content.readany()
            except Exception as exc:
                self.error = exc
                raise ClientBodyError(str(exc)) from exc
            finally:
                self.reading = False
            if not chunk:
                self.done = True
                return
            yield chunk
