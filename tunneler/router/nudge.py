"""When to nudge an SDK into reading what it already received (sans-IO; the adapter has the timer).

libziti 1.18's TLS layer (tlsuv 0.42 `process_inbound`) reads at most 16 buffers of 64 KiB per
socket event. When a burst of 1 MiB or more arrives and the last TLS record straddles that
limit, the rest of the record stays decrypted inside OpenSSL and nothing wakes libziti until the
router sends more bytes: the tail of a transfer and its FIN wait for the next, unrelated,
message (the stall of docs/compatibility.md). The cure is to send more bytes once the channel
has gone quiet: a ConnInspectRequest for no connection, which libziti answers silently.

`ReadNudger` decides, per channel, from the bytes the adapter writes and its ticks: after at
least `NUDGE_AFTER_BYTES` were written, a tick that saw no new output sends a nudge; while the
SDK has not answered, quiet ticks repeat it with a growing interval (`FIRST_INTERVAL` doubling
up to `MAX_INTERVAL`: a starved SDK may take seconds); the SDK's answer, which it can only send
after reading everything before it, ends the nudging.
"""

from __future__ import annotations

NUDGE_AFTER_BYTES = 512 * 1024
FIRST_INTERVAL = 0.02
MAX_INTERVAL = 1.0


class ReadNudger:
    """Read-nudge bookkeeping for one channel."""

    def __init__(self) -> None:
        self._written = 0  # bytes written, ever
        self._mark = 0  # `_written` at the previous tick
        self._since_nudge = 0
        self._awaiting = False
        self.interval = FIRST_INTERVAL  # until the next tick

    def wrote(self, size: int) -> bool:
        """`size` bytes went out; True when ticking should start (if it is not running)."""
        self._written += size
        self._since_nudge += size
        return self._since_nudge >= NUDGE_AFTER_BYTES

    def tick(self) -> tuple[bool, bool]:
        """The periodic check: (send a nudge now, tick again after `interval`)."""
        if self._written != self._mark:  # still sending: wait until the channel is quiet
            self._mark = self._written
            self.interval = FIRST_INTERVAL
            return False, True
        if self._since_nudge >= NUDGE_AFTER_BYTES or self._awaiting:
            return True, True
        return False, False

    def sent(self) -> None:
        """A nudge was written (after `wrote()` counted its bytes)."""
        if self._awaiting:
            self.interval = min(self.interval * 2, MAX_INTERVAL)
        self._since_nudge = 0
        self._awaiting = True
        self._mark = self._written

    def acknowledged(self) -> None:
        """The SDK answered the latest nudge."""
        self._awaiting = False
        self.interval = FIRST_INTERVAL
