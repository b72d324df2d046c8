"""Edge operations on authenticated channels: Connect, Bind, Unbind, Dial answers, relay, close.

Theory of operation (openziti-protocol.md §3.5, §3.7): a Connect picks a terminator and sends
a Dial request to its host; the host's DialSuccess (a reply, body = the new connection id)
makes the router queue StateConnected to the host and then StateConnected to the dialer,
back-to-back, before any Data of the circuit is relayed — the channels are FIFO, so neither SDK
sees Data for a connection it does not yet consider connected. Data bodies are relayed
unchanged (end-to-end ciphertext) with the ConnId rewritten for the other side. Everything here
is sans-IO: it only queues messages through the `Outbox`.
"""

from __future__ import annotations

import random
import struct
import uuid

from tunneler.channel.message import Message
from tunneler.edge import messages as e
from tunneler.log import get_logger
from tunneler.router.authority import RouterAuthority, SessionInfo
from tunneler.router.frames import EDGE_HEADER_MIN, body_length, data_conn_id_offset
from tunneler.router.outbox import Outbox
from tunneler.router.state import Circuit, Route, RouterChannel, RouterStats, Terminator
from tunneler.router.terminators import TerminatorTable

DIAL_TIMEOUT = 5.0
MAX_CIRCUITS_PER_CHANNEL = 4096
MAX_TERMINATORS_PER_CHANNEL = 256
MAX_EARLY_BYTES = 256 * 1024
ERROR_ENCRYPTION_REQUIRED = 11

_U32 = struct.Struct("<I")
log = get_logger("router")


class CircuitBook:
    """Circuits and terminators of one router."""

    def __init__(self, authority: RouterAuthority, outbox: Outbox, stats: RouterStats,
                 rng: random.Random | None = None) -> None:
        self._authority = authority
        self._out = outbox
        self._stats = stats
        self.terminators = TerminatorTable(rng)
        self.circuits: set[Circuit] = set()
        self._next_circuit_id = 1

    # -- validation ----------------------------------------------------------------------------
    def _session_for(self, ch: RouterChannel, request: Message,
                     kind: str) -> tuple[SessionInfo | None, str, int]:
        assert ch.api_session is not None
        identity_id = ch.api_session.identity_id
        session = self._authority.session_by_token(e.body_text(request))
        if session is None or session.type != kind or session.identity_id != identity_id:
            return None, e.INVALID_SESSION, e.ERROR_INVALID_SESSION
        if session.api_session_id != ch.api_session.id:
            # "Invalid Session" makes every SDK fetch a new session under its current API session.
            log.info("router.session_of_other_api_session", channel=ch.id,
                     api_session=ch.api_session.id, session_api_session=session.api_session_id)
            return None, e.INVALID_SESSION, e.ERROR_INVALID_SESSION
        if not self._authority.is_permitted(identity_id, session.service_id, kind):
            return None, (f"identity {ch.identity_name} is not permitted to "
                          f"{kind.lower()} service {session.service_name}"), e.ERROR_INVALID_SERVICE
        return session, "", 0

    def _refuse(self, ch: RouterChannel, request: Message, conn_id: int, reason: str,
                code: int) -> None:
        self._stats.dial_failures[f"{request.content_type}:{code}"] += 1
        self._out.reply(ch, request, e.state_closed(conn_id, reason, error_code=code))
        log.debug("router.request_refused", channel=ch.id, content_type=request.content_type,
                  conn_id=conn_id, reason=reason)

    def _id_in_use(self, ch: RouterChannel, conn_id: int) -> bool:
        return conn_id in ch.routes or conn_id in ch.listeners

    # -- dialer side -----------------------------------------------------------------------------
    def connect(self, ch: RouterChannel, msg: Message, now: float) -> None:
        """A dialer asks for a circuit to a service."""
        conn_id = e.conn_id_of(msg)
        if conn_id is None or self._id_in_use(ch, conn_id):
            self._refuse(ch, msg, conn_id or 0, f"connection id {conn_id} missing or in use",
                         e.ERROR_INTERNAL)
            return
        if len(ch.routes) >= MAX_CIRCUITS_PER_CHANNEL:
            self._refuse(ch, msg, conn_id, "too many connections on this channel",
                         e.ERROR_INTERNAL)
            return
        session, reason, code = self._session_for(ch, msg, "Dial")
        if session is None:
            self._refuse(ch, msg, conn_id, reason, code)
            return
        wanted = msg.get_str(e.TERMINATOR_IDENTITY_HEADER)
        terminator = self.terminators.select(session.service_id, wanted)
        if terminator is None:
            suffix = f" for identity {wanted}" if wanted else ""
            self._refuse(ch, msg, conn_id,
                         f"service {session.service_name} has no terminators{suffix}",
                         e.ERROR_INVALID_TERMINATOR)
            return
        dialer_key = msg.headers.get(e.PUBLIC_KEY_HEADER) or None
        if session.encryption_required and not (dialer_key and terminator.public_key):
            side = "host" if dialer_key else "dialer"
            self._refuse(ch, msg, conn_id, f"encryption required on service "
                         f"{session.service_name}, but the {side} sent no public key",
                         ERROR_ENCRYPTION_REQUIRED)
            return
        self._start_dial(ch, msg, conn_id, session, terminator, dialer_key, now)

    def _start_dial(self, ch: RouterChannel, msg: Message, conn_id: int, session: SessionInfo,
                    terminator: Terminator, dialer_key: bytes | None, now: float) -> None:
        circuit = Circuit(self._next_circuit_id, session, ch, conn_id, terminator, msg,
                          dialer_key if session.encryption_required else None)
        self._next_circuit_id += 1
        if terminator.assign_ids:
            circuit.assigned_conn_id = terminator.channel.assign_conn_id()
        dial = e.dial(terminator.listener_id, terminator.session.token, ch.identity_name,
                      public_key=circuit.dialer_key,
                      app_data=msg.headers.get(e.APP_DATA_HEADER),
                      router_conn_id=circuit.assigned_conn_id)
        circuit.dial_sequence = self._out.request(terminator.channel, dial, now, DIAL_TIMEOUT)
        terminator.channel.pending_dials[circuit.dial_sequence] = circuit
        ch.routes[conn_id] = Route(circuit, "dialer")
        self.circuits.add(circuit)

    # -- host side -------------------------------------------------------------------------------
    def dial_answered(self, host: RouterChannel, sequence: int, msg: Message) -> None:
        """The host replied to our Dial (DialSuccess or DialFailed)."""
        circuit = host.pending_dials.pop(sequence, None)
        if circuit is None:
            self.late_dial_answer(host, msg, 0.0)
            return
        if msg.content_type == e.CONTENT_TYPE_DIAL_SUCCESS:
            child = e.new_conn_id_of(msg)
            assigned = circuit.assigned_conn_id
            if child is None or self._id_in_use(host, child) or (
                    assigned is not None and child != assigned):
                self._out.reply(host, msg, e.state_closed(child or 0, "invalid connection id"))
                self._fail_dial(circuit, "host answered the dial with an invalid connection id",
                                "bad_dial_success")
                return
            self._establish(circuit, msg, child)
        elif msg.content_type == e.CONTENT_TYPE_DIAL_FAILED:
            self._fail_dial(circuit, f"host refused the dial: {e.body_text(msg) or 'no reason'}",
                            "dial_failed")
        else:
            self._fail_dial(circuit, "host sent an unexpected answer to the dial", "bad_answer")

    def dial_timed_out(self, host: RouterChannel, sequence: int) -> None:
        """The host did not answer a Dial in time."""
        circuit = host.pending_dials.pop(sequence, None)
        if circuit is not None:
            self._fail_dial(circuit, "timed out waiting for the host to accept the dial",
                            "dial_timeout")

    def late_dial_answer(self, host: RouterChannel, msg: Message, now: float) -> None:
        """A DialSuccess/DialFailed for a dial we gave up on: close the host's new connection."""
        if msg.content_type == e.CONTENT_TYPE_DIAL_SUCCESS:
            child = e.new_conn_id_of(msg)
            self._out.reply(host, msg, e.state_closed(child or 0, "the dial was abandoned"))

    def _establish(self, circuit: Circuit, dial_success: Message, child: int) -> None:
        host, dialer = circuit.host, circuit.dialer
        circuit.host_conn_id = child
        if not circuit.terminator.assign_ids:
            # Legacy hosts (libziti 0.29.3, tunneler) wait for this reply before sending; hosts
            # with router-provided ids (libziti 1.x) do not expect one, as with OpenZiti.
            self._out.reply(host, dial_success, e.state_connected(circuit.terminator.listener_id))
        key = circuit.terminator.public_key if circuit.session.encryption_required else None
        self._out.reply(dialer, circuit.connect,
                        e.state_connected(circuit.dialer_conn_id, public_key=key))
        host.routes[child] = Route(circuit, "host", dialer, _U32.pack(circuit.dialer_conn_id))
        dialer_route = dialer.routes[circuit.dialer_conn_id]
        dialer_route.peer, dialer_route.peer_conn_id = host, _U32.pack(child)
        self._stats.circuits_active += 1
        self._stats.circuits_created += 1
        log.debug("router.circuit_created", circuit=circuit.id,
                  service=circuit.session.service_name, dialer=dialer.identity_name,
                  host=host.identity_name)
        for message in circuit.early:
            self._forward(dialer, dialer_route, message)
        circuit.early.clear()

    def _fail_dial(self, circuit: Circuit, reason: str, label: str) -> None:
        self._stats.dial_failures[label] += 1
        self.close_circuit(circuit, reason)

    # -- relay -----------------------------------------------------------------------------------
    def relay_raw(self, ch: RouterChannel, frame: bytes) -> bool:
        """Fast path: relay a whole Data frame by rewriting its ConnId; False if not applicable."""
        offset = data_conn_id_offset(frame)
        if offset < 0:
            return False
        route = ch.routes.get(_U32.unpack_from(frame, offset)[0])
        if route is None or route.peer is None:
            return False
        view = memoryview(frame)
        self._out.raw(route.peer, view[:offset], route.peer_conn_id, view[offset + 4 :])
        self._stats.bytes_relayed += body_length(frame)
        self._stats.frames_relayed += 1
        self._out.flow(ch, route.peer)
        return True

    def data(self, ch: RouterChannel, msg: Message, now: float) -> None:
        """Data (or FIN) that did not take the fast path."""
        conn_id = e.conn_id_of(msg)
        route = ch.routes.get(conn_id) if conn_id is not None else None
        if route is None:
            self._out.send(ch, e.state_closed(conn_id or 0, "unknown connection id",
                                              error_code=e.ERROR_INTERNAL))
            return
        if route.peer is not None:
            self._forward(ch, route, msg)
            return
        circuit = route.circuit
        circuit.early.append(msg)
        circuit.early_bytes += len(msg.body)
        if circuit.early_bytes > MAX_EARLY_BYTES:
            self.close_circuit(circuit, "too much data before the circuit was connected")

    def _forward(self, ch: RouterChannel, route: Route, msg: Message) -> None:
        assert route.peer is not None
        headers = {k: v for k, v in msg.headers.items() if k >= EDGE_HEADER_MIN}
        headers[e.CONN_ID_HEADER] = route.peer_conn_id
        self._out.send(route.peer, Message(e.CONTENT_TYPE_DATA, headers, msg.body))
        self._stats.bytes_relayed += len(msg.body)
        self._stats.frames_relayed += 1
        self._out.flow(ch, route.peer)

    # -- closing ---------------------------------------------------------------------------------
    def state_closed(self, ch: RouterChannel, msg: Message, now: float) -> None:
        """A side closed a connection (or a 0.29.3 host closed its listener)."""
        conn_id = e.conn_id_of(msg)
        if conn_id is None:
            return
        route = ch.routes.get(conn_id)
        if route is not None:
            self.close_circuit(route.circuit, f"closed by the {route.side}", skip=route.side)
        elif conn_id in ch.listeners:
            self._remove_terminator(ch.listeners[conn_id], "listener closed")

    def close_circuit(self, circuit: Circuit, reason: str, *, skip: str | None = None) -> None:
        """Forget a circuit and tell each side (except `skip`: "dialer" or "host")."""
        if circuit not in self.circuits:
            return
        self.circuits.discard(circuit)
        dialer, host = circuit.dialer, circuit.host
        dialer.routes.pop(circuit.dialer_conn_id, None)
        if circuit.host_conn_id is None:
            if circuit.dial_sequence is not None:
                host.pending_dials.pop(circuit.dial_sequence, None)
                host.conn.cancel(circuit.dial_sequence)
            if skip != "dialer":
                self._out.reply(dialer, circuit.connect,
                                e.state_closed(circuit.dialer_conn_id, reason))
            log.debug("router.dial_failed", circuit=circuit.id, reason=reason)
            return
        host.routes.pop(circuit.host_conn_id, None)
        if skip != "host":
            self._out.send(host, e.state_closed(circuit.host_conn_id, reason))
        if skip != "dialer":
            self._out.send(dialer, e.state_closed(circuit.dialer_conn_id, reason))
        self._stats.circuits_active -= 1
        log.debug("router.circuit_closed", circuit=circuit.id, reason=reason)

    # -- terminators -----------------------------------------------------------------------------
    def bind(self, ch: RouterChannel, msg: Message, now: float) -> None:
        """A host registers a terminator."""
        conn_id = e.conn_id_of(msg)
        if conn_id is None or conn_id in ch.routes:
            self._refuse(ch, msg, conn_id or 0, f"connection id {conn_id} missing or in use",
                         e.ERROR_INTERNAL)
            return
        if conn_id not in ch.listeners and len(ch.listeners) >= MAX_TERMINATORS_PER_CHANNEL:
            self._refuse(ch, msg, conn_id, "too many terminators on this channel",
                         e.ERROR_INTERNAL)
            return
        session, reason, code = self._session_for(ch, msg, "Bind")
        if session is None:
            self._refuse(ch, msg, conn_id, reason, code)
            return
        key = msg.headers.get(e.PUBLIC_KEY_HEADER) or None
        if session.encryption_required and not key:
            self._refuse(ch, msg, conn_id, f"encryption required on service "
                         f"{session.service_name}, but the bind carries no public key",
                         ERROR_ENCRYPTION_REQUIRED)
            return
        if conn_id in ch.listeners:
            self._remove_terminator(ch.listeners[conn_id], "rebound")
        terminator = self._add_terminator(ch, msg, conn_id, session, key)
        connected = e.state_connected(conn_id)
        if terminator.assign_ids:
            connected.set_bool(e.ROUTER_PROVIDED_CONN_ID_HEADER, True)
        self._out.reply(ch, msg, connected)

    def _add_terminator(self, ch: RouterChannel, msg: Message, conn_id: int,
                        session: SessionInfo, key: bytes | None) -> Terminator:
        cost = msg.headers.get(e.COST_HEADER, b"")
        precedence = msg.headers.get(e.PRECEDENCE_HEADER, b"")
        terminator = Terminator(
            id=uuid.uuid4().hex, session=session, channel=ch, listener_id=conn_id,
            public_key=key, cost=int.from_bytes(cost[:2], "little"),
            precedence=precedence[0] if precedence else e.PRECEDENCE_DEFAULT,
            identity=msg.get_str(e.TERMINATOR_IDENTITY_HEADER) or "",
            assign_ids=msg.get_bool(e.ROUTER_PROVIDED_CONN_ID_HEADER))
        ch.listeners[conn_id] = terminator
        self.terminators.add(terminator)
        self._stats.terminators_active += 1
        log.info("router.terminator_added", terminator=terminator.id,
                 service=session.service_name, host=ch.identity_name, channel=ch.id,
                 cost=terminator.cost, precedence=terminator.precedence)
        return terminator

    def unbind(self, ch: RouterChannel, msg: Message, now: float) -> None:
        """A host removes its terminator."""
        conn_id = e.conn_id_of(msg) or 0
        terminator = ch.listeners.get(conn_id)
        if terminator is not None:
            self._remove_terminator(terminator, "unbound")
        self._out.reply(ch, msg, e.state_closed(conn_id, "unbind successful"))

    def _remove_terminator(self, terminator: Terminator, reason: str) -> None:
        terminator.channel.listeners.pop(terminator.listener_id, None)
        if self.terminators.remove(terminator):
            self._stats.terminators_active -= 1
            log.info("router.terminator_removed", terminator=terminator.id,
                     service=terminator.session.service_name, reason=reason)

    # -- channel loss and live policy ------------------------------------------------------------
    def channel_lost(self, ch: RouterChannel) -> None:
        """Close every circuit crossing `ch` and drop its terminators."""
        for circuit in [route.circuit for route in ch.routes.values()]:
            self.close_circuit(circuit, "peer channel closed")
        for circuit in list(ch.pending_dials.values()):
            self.close_circuit(circuit, "host channel closed")
        for terminator in list(ch.listeners.values()):
            self._remove_terminator(terminator, "channel closed")

    def sweep(self) -> None:
        """Re-check sessions and policy for live circuits and terminators; close the revoked."""
        check = _PolicyCheck(self._authority)
        for circuit in list(self.circuits):
            if not (check.session(circuit.session) and check.permitted(circuit.session, "Dial")
                    and check.permitted(circuit.terminator.session, "Bind")):
                self.close_circuit(circuit, "access to the service was revoked")
        for terminator in self.terminators.all():
            if not (check.session(terminator.session)
                    and check.permitted(terminator.session, "Bind")):
                self._out.send(terminator.channel, e.state_closed(
                    terminator.listener_id, "bind access to the service was revoked"))
                self._remove_terminator(terminator, "revoked")


class _PolicyCheck:
    """Authority lookups cached for one sweep."""

    def __init__(self, authority: RouterAuthority) -> None:
        self._authority = authority
        self._sessions: dict[str, bool] = {}
        self._permissions: dict[tuple[str, str, str], bool] = {}

    def session(self, session: SessionInfo) -> bool:
        if session.token not in self._sessions:
            self._sessions[session.token] = (
                self._authority.session_by_token(session.token) is not None)
        return self._sessions[session.token]

    def permitted(self, session: SessionInfo, kind: str) -> bool:
        key = (session.identity_id, session.service_id, kind)
        if key not in self._permissions:
            self._permissions[key] = self._authority.is_permitted(*key)
        return self._permissions[key]
