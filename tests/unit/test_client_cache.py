"""The persisted service cache: what is saved comes back equal, the file is 0600 and written
only when its content changed, and a damaged or too readable file is refused with a reason."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from tunneler.client.cache import CachedState, ServiceCache, cache_path, decode, encode
from tunneler.client.ctrl import ApiSession, EdgeRouterRef, ServiceInfo, SessionRef
from tunneler.client.oidc import Tokens
from tunneler.errors import CacheError

ROUTERS = (EdgeRouterRef("edge1", "tls://edge1:3022"), EdgeRouterRef("edge2", "tls://edge2:3023"))


def _state(tokens: Tokens | None = None, saved_at: float = 1_800_000_000.0) -> CachedState:
    session = ApiSession("as1", "secret-token", "id1", "laptop",
                         datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    llm = ServiceInfo("s1", "llm", frozenset({"Dial"}), True,
                      {"intercept.v1": {"addresses": ["llm.private"], "protocols": ["tcp"],
                                        "portRanges": [{"low": 8000, "high": 8000}]}}, "t1")
    host = ServiceInfo("s2", "echo", frozenset({"Bind", "Dial"}), False, {}, "t2")
    sessions = {("s1", "Dial"): SessionRef("se1", "dial-token", "Dial", "s1", ROUTERS),
                ("s2", "Bind"): SessionRef("se2", "bind-token", "Bind", "s2", ROUTERS[:1])}
    return CachedState(saved_at, "legacy", session, tokens, ROUTERS,
                       {"llm": llm, "echo": host}, sessions)


@pytest.mark.parametrize("tokens", [None, Tokens("access", "refresh", 1.8e9, "as1", "id1")])
def test_what_is_saved_comes_back_equal(tokens: Tokens | None) -> None:
    state = _state(tokens)
    assert decode(encode(state)) == state


def test_the_file_is_0600_next_to_the_identity_and_not_taken_for_one(tmp_path: Path) -> None:
    path = cache_path(tmp_path / "laptop.json")
    assert path.name == "laptop.json.cache" and not path.match("*.json")
    cache = ServiceCache(path)
    assert cache.load() is None
    assert cache.save(_state())
    assert path.stat().st_mode & 0o777 == 0o600
    assert cache.load() == _state()


def test_an_unchanged_state_is_not_written_again(tmp_path: Path) -> None:
    cache = ServiceCache(tmp_path / "laptop.json.cache")
    assert cache.save(_state(saved_at=1.0))
    assert not cache.save(_state(saved_at=2.0))       # same content, a later time
    assert decode(cache.path.read_bytes()).saved_at == 1.0
    tokens = Tokens("access", "refresh", 1.8e9, "as1", "id1")
    assert cache.save(_state(tokens, saved_at=3.0))   # new tokens: written
    assert decode(cache.path.read_bytes()).tokens == tokens


def test_a_cache_others_can_read_is_refused(tmp_path: Path) -> None:
    cache = ServiceCache(tmp_path / "laptop.json.cache")
    cache.save(_state())
    os.chmod(cache.path, 0o644)
    with pytest.raises(CacheError, match="chmod 600"):
        cache.load()


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"format": 2}', b"\xff\xfe",
                                  encode(_state()).replace(b'"services"', b'"servicez"'),
                                  encode(_state()).replace(b'"token": "secret-token"',
                                                           b'"token": null').replace(
                                      b'"expires_at": "2030', b'"expires_at": "x2030')])
def test_a_damaged_cache_is_refused_with_a_reason(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "laptop.json.cache"
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(CacheError, match=str(path)):
        ServiceCache(path).load()
