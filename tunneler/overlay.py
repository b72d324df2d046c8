"""The narrow interface between a data path and the overlay (issue 10, item 5).

A data path (the intercepting engine, the proxy, the socket bridges) sees the overlay only
through these protocols, never through the client package's classes:

- `DialContext.dial(service, sink, ...)` opens a connection to a service and returns an
  `OverlayConnection` (write, write_eof, close, and pause/resume of what comes back);
- what comes back goes to the `OverlaySink` the caller gave: connected, data, EOF, closed,
  and whether the overlay can take more (`set_link_writable`);
- `OfferedService` is the part of a listed service a data path reads (name, permissions,
  configs) to decide what it intercepts.

`tunneler.client` implements them (`ZitiContext`, `EdgeConnection`, `ServiceInfo`); the
engine's tests implement them with in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class OverlayConnection(Protocol):
    """One dialed (or accepted) connection to a service."""

    def write(self, data: bytes) -> None:
        """Send payload to the other end."""

    def write_eof(self) -> None:
        """Half-close: no more payload from this side."""

    def close(self) -> None:
        """Close now; the sink is not called back."""

    def pause(self) -> None:
        """This side cannot take more: stop delivering data until `resume`."""

    def resume(self) -> None:
        """This side drained: deliver data again."""


class OverlaySink(Protocol):
    """Where an overlay connection delivers what comes back (a socket bridge, a UDP flow)."""

    def edge_connected(self, conn: OverlayConnection) -> None:
        """The circuit is up: start reading the local side into `conn.write()`."""

    def edge_data(self, data: bytes) -> None:
        """Payload from the peer."""

    def edge_eof(self) -> None:
        """The peer half-closed (FIN): every byte has been delivered."""

    def edge_closed(self, abrupt: bool) -> None:
        """The connection is over: close gracefully, or reset the local side if `abrupt`."""

    def set_link_writable(self, writable: bool) -> None:
        """Pause (False) or resume (True) reading the local side (overlay backpressure)."""


class OfferedService(Protocol):
    """A service as the controller lists it for one identity (what a data path reads)."""

    @property
    def name(self) -> str: ...

    @property
    def permissions(self) -> frozenset[str]: ...

    @property
    def configs(self) -> Mapping[str, Any]: ...


class DialContext(Protocol):
    """An identity that dials services (`tunneler.client.context.ZitiContext`)."""

    @property
    def name(self) -> str: ...

    @property
    def services(self) -> Mapping[str, OfferedService]: ...

    async def dial(self, service_name: str, sink: OverlaySink, *,
                   app_data: dict[str, str | int | None] | None = None,
                   terminator_identity: str | None = None,
                   timeout: float = ...) -> OverlayConnection: ...
