"""Deterministic mutation fuzzing of every decoder that takes outside input (issue 9, item 5).

A target is a function of one input (bytes) that returns "accepted" or "rejected:<reason>";
a decoder that refuses an input with its documented error type counts as a rejection, any
other exception is a crash (kept with the input, in hex). `run()` spreads `total` inputs over
the targets by weight; each input is a seed mutated 1 to 4 times by a seeded `random.Random`
(bit flips, interesting bytes, inserted/deleted/duplicated ranges, truncation, length fields
that lie, splices with another seed, now and then pure noise), so a run is reproducible
from its seed. The seeds are the named corpus (tests/corpus/) plus a few built here.

Used by tests/unit/test_fuzz_scale.py (≥ 50,000 inputs per CI run) and bench/fuzz.py (a
million). The REST target needs a running controller and lives in the test.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from dnslib import DNSRecord

from tests.support.controller import init_network
from tunneler import jwt
from tunneler.channel.connection import ChannelConnection, ProtocolViolation
from tunneler.channel.message import FrameDecoder, FrameError, Message, encode
from tunneler.controller import pki, policyfile
from tunneler.dns.answer import DnsResponder, Drop, check_upstream_reply
from tunneler.dns.pool import VipPool
from tunneler.edge import messages as e
from tunneler.edge.appdata import decode_app_data, encode_app_data
from tunneler.errors import TunnelerError
from tunneler.identity import load_identity
from tunneler.packet import DropReason, parse
from tunneler.packet.build import build_icmp_port_unreachable, build_tcp_rst

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
Target = Callable[[bytes], str]
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF)
LENGTH_LIES = (0, 1, 0x7FFF, 0x8000, 0xFFFF)


def corpus(name: str) -> list[dict[str, str]]:
    """The entries of tests/corpus/NAME.jsonl: name, source, hex, expect."""
    lines = (CORPUS / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def mutate(rng: random.Random, seed: bytes, seeds: Sequence[bytes]) -> bytes:
    """One mutant of `seed` (see the module docstring)."""
    if rng.random() < 0.05:
        return rng.randbytes(rng.randrange(0, 2 * len(seed) + 8))
    buf = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[at % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[at % len(buf)] = rng.choice(INTERESTING)
        elif op == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:
            del buf[at:at + rng.randint(1, 16)]
        elif op == 4:
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 5 and len(buf) >= 2:
            offset = rng.randrange(len(buf) - 1)
            buf[offset:offset + 2] = struct.pack(">H", rng.choice(
                (*LENGTH_LIES, max(0, len(buf) - 1), len(buf) + 1)))
        elif op == 6 and buf:
            piece = buf[at:at + rng.randint(1, 32)]
            buf[at:at] = piece * rng.randint(1, 4)
        elif op == 7:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:at] + bytearray(other[cut:])
    return bytes(buf)


@dataclass
class Tally:
    """What one target did with its inputs."""

    inputs: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    crashes: list[tuple[str, str]] = field(default_factory=list)   # (error, input hex)

    def count(self, outcome: str) -> None:
        self.inputs += 1
        if outcome == "accepted":
            self.accepted += 1
        else:
            self.rejected[outcome.removeprefix("rejected:")] += 1


def run(targets: Mapping[str, tuple[Target, Sequence[bytes], int]], total: int,
        seed: int = 1) -> dict[str, Tally]:
    """`total` mutants spread over `targets` (name -> (target, seeds, weight))."""
    rng = random.Random(seed)
    weights = sum(weight for _, _, weight in targets.values())
    tallies: dict[str, Tally] = {}
    for name, (target, seeds, weight) in targets.items():
        tally = tallies[name] = Tally()
        for _ in range(total * weight // weights):
            data = mutate(rng, rng.choice(seeds), seeds)
            try:
                tally.count(target(data))
            except Exception as exc:  # noqa: BLE001 - the point: anything undocumented is a crash
                tally.crashes.append((f"{type(exc).__name__}: {exc}", data.hex()))
                tally.inputs += 1
    return tallies


# ---- targets --------------------------------------------------------------------------------

def packet_target(data: bytes) -> str:
    """The TUN packet parser, then the replies built for what it accepts."""
    parsed = parse(data)
    if isinstance(parsed, DropReason):
        return f"rejected:{parsed.name}"
    for reply in (build_tcp_rst(data, parsed), build_icmp_port_unreachable(data, parsed)):
        if reply is not None and isinstance(parse(reply), DropReason):
            raise AssertionError("a reply we built does not parse")
    return "accepted"


def dns_responder() -> DnsResponder:
    dns = DnsResponder(VipPool("100.64.0.1/26", wildcard_quota=8), upstream=True)
    dns.set_intercepts({"llm.private.test"}, {"models.test"}, 0.0,
                       local_domains={"private.test"})
    return dns


def dns_target(responder: DnsResponder) -> Target:
    def target(data: bytes) -> str:
        outcome = responder.handle(data, 1.0)
        return f"rejected:{outcome.reason}" if isinstance(outcome, Drop) else "accepted"
    return target


def upstream_target(query: bytes) -> Target:
    networks = [ip_network("100.64.0.0/10")]

    def target(data: bytes) -> str:
        outcome = check_upstream_reply(query, data, networks)
        return f"rejected:{outcome.reason}" if isinstance(outcome, Drop) else "accepted"
    return target


def channel_target(data: bytes) -> str:
    """The channel v2 connection: framing, headers, hello and reply bookkeeping."""
    connection = ChannelConnection()
    events = connection.receive_data(data[:7]) + connection.receive_data(data[7:])
    violations = [ev for ev in events if isinstance(ev, ProtocolViolation)]
    return "rejected:protocol_violation" if violations else "accepted"


def edge_target(data: bytes) -> str:
    """Frames decoded, then read as edge messages: conn ids, bodies, app data."""
    try:
        messages = FrameDecoder().feed(data)
    except FrameError:
        return "rejected:frame"
    for message in messages:
        e.conn_id_of(message)
        e.new_conn_id_of(message)
        e.body_text(message)
        decode_app_data(message.headers.get(e.APP_DATA_HEADER))
    return "accepted" if messages else "rejected:incomplete"


def file_target(path: Path, load: Callable[[Path], object],
                errors: tuple[type[Exception], ...] = (TunnelerError,)) -> Target:
    """A loader that reads a file (policy files, identity files), fed through `path`."""
    def target(data: bytes) -> str:
        path.write_bytes(data)
        path.chmod(0o600)
        try:
            load(path)
        except errors as exc:
            return f"rejected:{type(exc).__name__}"
        return "accepted"
    return target


def jwt_target(key: rsa.RSAPublicKey) -> Target:
    def target(data: bytes) -> str:
        token = data.decode("utf-8", "replace")
        try:
            jwt.decode_unverified(token)
            jwt.verify(token, key, now=1_000_000.0)
        except TunnelerError as exc:
            return f"rejected:{type(exc).__name__}"
        return "accepted"
    return target


def targets(work: Path) -> dict[str, tuple[Target, list[bytes], int]]:
    """Every in-process target with its seeds and weight; files and a network go in `work`."""
    network = init_network(work / "net")
    key = pki.load_key(network / "pki" / "ctrl.key").public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    query = DNSRecord.question("example.com").pack()
    packets = [bytes.fromhex(e["hex"]) for e in corpus("packets")]
    messages = [bytes.fromhex(e["hex"]) for e in corpus("dns")]
    token = _token(network)
    return {
        "packet": (packet_target, packets, 30),
        "dns": (dns_target(dns_responder()), messages, 24),
        "dns-upstream": (upstream_target(query),
                         [DNSRecord.parse(query).reply().pack(), *messages[:20]], 8),
        "channel": (channel_target, channel_seeds(), 12),
        "edge": (edge_target, edge_seeds(), 10),
        "policy-file": (file_target(work / "apply.yaml", policy_load),
                        policy_seeds(), 6),
        "identity-file": (file_target(work / "identity.json", identity_load),
                          [identity_seed(network)], 4),
        "jwt": (jwt_target(key), [token], 6),
    }


def _token(network: Path) -> bytes:
    """A valid enrollment JWT signed by the network's controller key (the mutants' seed)."""
    key = pki.load_key(network / "pki" / "ctrl.key")
    assert isinstance(key, rsa.RSAPrivateKey)
    return jwt.encode({"em": "ott", "iss": "https://localhost:1280", "sub": "id", "jti": "j",
                       "exp": 2_000_000, "aud": ""}, key).encode()


# ---- seeds ----------------------------------------------------------------------------------

def channel_seeds() -> list[bytes]:
    return [encode(m) for m in (
        Message(0, {0: b"\x01\x02", 2: b"token"}, b"hello"),
        e.connect(7, "session-token", "caller"),
        e.bind(1, "session-token", "host"),
        e.data(7, 3, b"payload" * 20),
        e.state_closed(7, "bye"),
        e.dial_success(1, 100),
        e.fin(7, 9),
    )]


def edge_seeds() -> list[bytes]:
    app = encode_app_data({"dst_protocol": "tcp", "dst_hostname": "db.internal",
                           "dst_port": 5432})
    return [*channel_seeds(), encode(e.dial(1, "session-token", "caller", app_data=app))]


def policy_seeds() -> list[bytes]:
    root = Path(__file__).resolve().parents[2] / "policies"
    return [path.read_bytes() for path in sorted(root.glob("*.yaml"))] + [
        yaml.safe_dump({"identities": [{"name": "a", "roleAttributes": ["x"]}]}).encode()]


def identity_seed(network: Path) -> bytes:
    """A valid identity file (the network's CA as cert and trust anchor, inline PEM)."""
    ca = (network / "pki" / "ca.pem").read_text()
    key = (network / "pki" / "ca.key").read_text()
    return json.dumps({"ztAPI": "https://localhost:1280", "id": {
        "cert": f"pem:{ca}", "key": f"pem:{key}", "ca": f"pem:{ca}"}}).encode()


def policy_load(path: Path) -> object:
    return policyfile.load(path)


def identity_load(path: Path) -> object:
    return load_identity(path)
