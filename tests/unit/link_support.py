"""A stand-in for `RouterLink`: records what would be written, lets a test play the router."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from tunneler.channel.message import REPLY_FOR_HEADER, Message
from tunneler.client.link import LinkHandler, RouterLink


class RecordingLink:
    """Stands in for RouterLink: records sends, lets the test answer requests."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.requests: list[tuple[Message, Callable[[Message | None], None]]] = []
        self.handlers: dict[int, LinkHandler] = {}
        self.writable = True
        self.closed = False
        self.sequence = 0
        self.pausers: set[object] = set()   # who holds reading of the link paused

    def _stamp(self, message: Message) -> int:
        self.sequence += 1
        message.sequence = self.sequence
        self.sent.append(message)
        return self.sequence

    def send(self, message: Message) -> int:
        return self._stamp(message)

    def reply(self, request: Message, message: Message) -> int:
        message.set_int32(REPLY_FOR_HEADER, request.sequence)
        return self._stamp(message)

    def request(self, message: Message, timeout: float,
                callback: Callable[[Message | None], None]) -> int:
        self.requests.append((message, callback))
        return self._stamp(message)

    async def request_async(self, message: Message, timeout: float) -> Message:
        future: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
        self.request(message, timeout, future.set_result)
        reply = await future
        assert reply is not None
        return reply

    def cancel_request(self, sequence: int) -> None:
        pass

    def register(self, conn_id: int, handler: LinkHandler) -> None:
        self.handlers[conn_id] = handler

    def unregister(self, conn_id: int) -> None:
        self.handlers.pop(conn_id, None)

    def pause_reading_for(self, who: object) -> None:
        self.pausers.add(who)

    def resume_reading_for(self, who: object) -> None:
        self.pausers.discard(who)


def as_link(link: RecordingLink) -> RouterLink:
    """The recording link typed as the real one."""
    return cast(RouterLink, link)
