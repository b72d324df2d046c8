"""Ordered output per channel, flushed once per receive, and channel-to-channel backpressure.

Everything the core sends goes through here so that the adapter can write each touched
channel's bytes with one `transport.write()` after handling a whole read. Backpressure: when a
channel's transport is above its high-water mark (`set_congested(ch, True)`), every channel
that relays Data into it is paused; each is resumed once no destination it feeds is congested.
"""

from __future__ import annotations

from tunneler.channel.message import Message
from tunneler.router.state import RouterChannel


class Outbox:
    """Send helpers that remember which channels have output, plus pause/resume bookkeeping."""

    def __init__(self) -> None:
        self.dirty: set[RouterChannel] = set()

    def send(self, ch: RouterChannel, message: Message) -> int:
        """Send a message on a channel; returns its sequence."""
        self.dirty.add(ch)
        return ch.conn.send(message)

    def reply(self, ch: RouterChannel, request: Message, message: Message) -> int:
        """Send `message` as the reply to `request`."""
        self.dirty.add(ch)
        return ch.conn.reply(request, message)

    def request(self, ch: RouterChannel, message: Message, now: float, timeout: float) -> int:
        """Send a request that expects a reply within `timeout` seconds."""
        self.dirty.add(ch)
        return ch.conn.request(message, now, timeout)

    def raw(self, ch: RouterChannel, *parts: bytes | bytearray | memoryview) -> None:
        """Queue raw frame bytes."""
        self.dirty.add(ch)
        ch.enqueue_raw(*parts)

    def close(self, ch: RouterChannel, *, abort: bool = False) -> None:
        """Close a channel after its queued output (or at once with `abort`)."""
        if ch.closing is None or (abort and ch.closing == "graceful"):
            ch.closing = "abort" if abort else "graceful"
        self.dirty.add(ch)

    def flush(self) -> None:
        """Write every touched channel's output; carry out pending closes."""
        while self.dirty:
            ch = self.dirty.pop()
            if ch.closing == "lost":
                continue
            if ch.closing == "abort":
                ch.sink.close(abort=True)
                continue
            data = ch.take_output()
            if data:
                ch.sink.write(data)
            if ch.closing == "graceful":
                ch.sink.close()

    # -- backpressure ------------------------------------------------------------------------
    def flow(self, source: RouterChannel, destination: RouterChannel) -> None:
        """Note that `source` just fed `destination`; pause it if the destination is congested."""
        if destination.congested and source not in destination.blocking:
            destination.blocking.add(source)
            source.blocked_by.add(destination)
            if len(source.blocked_by) == 1:
                source.sink.pause_reading()

    def set_congested(self, ch: RouterChannel, congested: bool) -> None:
        """The transport of `ch` crossed its high (True) or low (False) water mark."""
        ch.congested = congested
        if not congested:
            self._release(ch)

    def forget(self, ch: RouterChannel) -> None:
        """Drop a lost channel from the pause bookkeeping."""
        self._release(ch)
        for destination in ch.blocked_by:
            destination.blocking.discard(ch)
        ch.blocked_by.clear()

    def _release(self, destination: RouterChannel) -> None:
        for source in destination.blocking:
            source.blocked_by.discard(destination)
            if not source.blocked_by and source.closing is None:
                source.sink.resume_reading()
        destination.blocking.clear()
