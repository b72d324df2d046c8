"""Fuzzing at scale in CI (issue 9, item 5): the named corpus replayed, then ≥ 50,000 mutants
across every decoder that takes outside input, and controller REST bodies against a real
controller. Zero crashes; every input is either accepted or rejected with a counted reason.
`bench/fuzz.py` runs the same harness with a million inputs.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.support import fuzz
from tests.support.controller import init_network, running_api
from tunneler.dns.answer import Drop

SCALE = 50_000
REST_REQUESTS = 1_500


def test_the_named_corpus_gives_the_reviewed_outcome_for_every_entry() -> None:
    packets, messages = fuzz.corpus("packets"), fuzz.corpus("dns")
    assert len(packets) >= 150 and len(messages) >= 200
    for entry in packets:
        got = fuzz.packet_target(bytes.fromhex(entry["hex"]))
        assert got.removeprefix("rejected:") == entry["expect"], entry["name"]
    responder = fuzz.dns_responder()
    for entry in messages:
        outcome = responder.handle(bytes.fromhex(entry["hex"]), 1.0)
        got = outcome.reason if isinstance(outcome, Drop) else type(outcome).__name__.lower()
        assert got == entry["expect"], entry["name"]
    assert all(entry["source"] for entry in packets + messages)


def test_fifty_thousand_mutants_crash_nothing_and_every_rejection_is_counted(
        tmp_path: Path) -> None:
    tallies = fuzz.run(fuzz.targets(tmp_path), SCALE + 1_000, seed=random.SystemRandom().randrange(
        1 << 32))
    total = sum(t.inputs for t in tallies.values())
    lines = [f"{name:14} {t.inputs:6} inputs  {t.accepted:6} accepted  "
             f"{sum(t.rejected.values()):6} rejected ({len(t.rejected)} reasons)"
             for name, t in tallies.items()]
    print("\n".join(["fuzz:", *lines, f"total {total} inputs"]))
    crashes = {name: t.crashes[:3] for name, t in tallies.items() if t.crashes}
    assert crashes == {}, crashes
    assert total >= SCALE
    for name, tally in tallies.items():
        assert tally.accepted + sum(tally.rejected.values()) == tally.inputs, name
        assert tally.rejected, f"{name}: no mutant was rejected, so the fuzzer missed it"


@pytest.mark.timeout(300)
def test_controller_rest_bodies_never_get_a_server_error(tmp_path: Path) -> None:
    network = init_network(tmp_path / "net")
    rng = random.Random(7)
    seeds = [json.dumps(body).encode() for body in (
        {}, {"configTypes": ["all"]}, {"serviceId": "x", "type": "Dial"},
        {"name": "a", "roleAttributes": ["b"]}, [1, 2, 3], {"a": {"b": {"c": [None, True]}}})]
    paths = [("POST", "/edge/client/v1/authenticate?method=cert"),
             ("POST", "/edge/client/v1/enroll?method=ott&token=x"),
             ("POST", "/edge/client/v1/sessions"), ("POST", "/edge/client/v1/current-identity"),
             ("PUT", "/edge/client/v1/current-api-session/certificates"),
             ("POST", "/oidc/oauth/token")]

    async def scenario() -> Counter[int]:
        statuses: Counter[int] = Counter()
        context = ssl.create_default_context(cafile=str(network / "pki" / "ca.pem"))
        async with running_api(network) as api, aiohttp.ClientSession() as session:
            for _ in range(REST_REQUESTS):
                method, path = rng.choice(paths)
                body = fuzz.mutate(rng, rng.choice(seeds), seeds)
                async with session.request(
                        method, f"{api.url}{path}", data=body, ssl=context,
                        headers={"Content-Type": "application/json"}) as reply:
                    await reply.read()
                    statuses[reply.status] += 1
        return statuses

    statuses = asyncio.run(scenario())
    print(f"REST fuzz: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert sum(statuses.values()) == REST_REQUESTS
    assert not any(status >= 500 for status in statuses), statuses
