"""SQLite store: one-time enrollment under concurrency, policy matching, sessions, expiry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunneler.controller.models import (
    Identity,
    Service,
    ServicePolicy,
    policy_permits,
    roles_match,
)
from tunneler.controller.store import API_SESSION_SECONDS, Store
from tunneler.errors import EnrollmentError


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock()


@pytest.fixture(name="store")
def _store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    store = Store(tmp_path / "state.db", clock=clock)
    yield store
    store.close()


def _setup(store: Store) -> None:
    store.upsert_identity("laptop", ["llm-clients"])
    store.upsert_identity("llm-host", ["llm-hosts"])
    store.upsert_identity("stranger", [])
    store.upsert_service("llm", encryption_required=True, role_attributes=["llm"],
                         configs={"host.v1": {"protocol": "tcp", "address": "x", "port": 1}})
    store.upsert_policy("llm-dial", kind="Dial", semantic="AnyOf",
                        identity_roles=["#llm-clients"], service_roles=["@llm"])
    store.upsert_policy("llm-bind", kind="Bind", semantic="AnyOf",
                        identity_roles=["#llm-hosts"], service_roles=["#llm"])


def _ids(store: Store, identity: str) -> tuple[str, str]:
    ident, service = store.identity_by_name(identity), store.service_by_name("llm")
    assert ident is not None and service is not None
    return ident.id, service.id


def test_policy_matching_through_the_store(store: Store) -> None:
    _setup(store)
    laptop, llm = _ids(store, "laptop")
    host, _ = _ids(store, "llm-host")
    stranger, _ = _ids(store, "stranger")
    assert store.is_permitted(laptop, llm, "Dial") and not store.is_permitted(laptop, llm, "Bind")
    assert store.is_permitted(host, llm, "Bind") and not store.is_permitted(host, llm, "Dial")
    assert not store.is_permitted(stranger, llm, "Dial")
    assert not store.is_permitted("nope", llm, "Dial")
    store.upsert_policy("all-dial", kind="Dial", semantic="AnyOf", identity_roles=["#all"],
                        service_roles=["#all"])
    assert store.is_permitted(stranger, llm, "Dial")


IDENTITY = Identity("i1", "laptop", ("a", "b"), 0.0, 0.0)
SERVICE = Service("s1", "llm", True, ("llm",), {}, {}, 0.0, 0.0)


@pytest.mark.parametrize(("roles", "semantic", "expected"), [
    (["#a"], "AnyOf", True), (["#c"], "AnyOf", False), (["#c", "#b"], "AnyOf", True),
    (["#a", "#b"], "AllOf", True), (["#a", "#c"], "AllOf", False), (["@laptop"], "AnyOf", True),
    (["@i1"], "AnyOf", True), (["@other"], "AnyOf", False), (["#all"], "AnyOf", True),
    ([], "AnyOf", False), ([], "AllOf", False), (["a"], "AnyOf", False),
])
def test_roles_match(roles: list[str], semantic: str, expected: bool) -> None:
    assert roles_match(roles, semantic, IDENTITY.id, IDENTITY.name,
                       IDENTITY.role_attributes) is expected


def test_policy_needs_both_sides() -> None:
    policy = ServicePolicy("p", "p", "Dial", "AnyOf", ("#a",), ("@other",))
    assert not policy_permits(policy, IDENTITY, SERVICE)
    allowed = ServicePolicy("p", "p", "Dial", "AnyOf", ("#a",), ("#llm",))
    assert policy_permits(allowed, IDENTITY, SERVICE)


def test_enrollment_is_consumed_once(store: Store) -> None:
    _setup(store)
    laptop, _ = _ids(store, "laptop")
    jti = store.create_enrollment(laptop, expires_at=1_700_000_000.0 + 60)
    identity, pem = store.consume_enrollment(jti, lambda ident: ("ab" * 20, "PEM"))
    assert (identity.name, pem) == ("laptop", "PEM")
    found = store.identity_by_fingerprint("ab" * 20)
    assert found is not None and found.name == "laptop"
    with pytest.raises(EnrollmentError, match="already used"):
        store.consume_enrollment(jti, lambda ident: ("cd" * 20, "PEM"))


def test_expired_enrollment_is_refused_and_kept_unusable(store: Store, clock: Clock) -> None:
    _setup(store)
    laptop, _ = _ids(store, "laptop")
    jti = store.create_enrollment(laptop, expires_at=clock.now + 60)
    clock.now += 61
    with pytest.raises(EnrollmentError, match="expired"):
        store.consume_enrollment(jti, lambda ident: ("ab" * 20, "PEM"))
    assert store.identity_by_fingerprint("ab" * 20) is None


def test_failed_issuance_rolls_back(store: Store) -> None:
    _setup(store)
    laptop, _ = _ids(store, "laptop")
    jti = store.create_enrollment(laptop, expires_at=1_700_000_000.0 + 60)

    def explode(identity: Identity) -> tuple[str, str]:
        raise EnrollmentError("CA unavailable")

    with pytest.raises(EnrollmentError, match="CA unavailable"):
        store.consume_enrollment(jti, explode)
    assert store.consume_enrollment(jti, lambda ident: ("ef" * 20, "PEM"))[0].name == "laptop"


def test_concurrent_consumption_has_exactly_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    setup = Store(path)
    setup.upsert_identity("laptop", [])
    ident = setup.identity_by_name("laptop")
    assert ident is not None
    jti = setup.create_enrollment(ident.id, expires_at=4_000_000_000)
    setup.close()
    barrier = threading.Barrier(8)
    results: list[str] = []
    lock = threading.Lock()

    def attempt(index: int) -> None:
        store = Store(path)
        try:
            barrier.wait()
            store.consume_enrollment(jti, lambda identity: (f"{index:040x}", "PEM"))
            outcome = "ok"
        except EnrollmentError:
            outcome = "refused"
        finally:
            store.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["ok"] + ["refused"] * 7


def test_api_sessions_expire_and_refresh(store: Store, clock: Clock) -> None:
    _setup(store)
    laptop = store.identity_by_name("laptop")
    assert laptop is not None
    session = store.create_api_session(laptop, "ab" * 20, ["intercept.v1"])
    assert session.config_types == ("intercept.v1",)
    info = store.api_session_by_token(session.token)
    assert info is not None and info.identity_name == "laptop"
    assert info.cert_fingerprints == frozenset({"ab" * 20})
    clock.now += API_SESSION_SECONDS - 10
    assert store.api_session(session.token) is not None  # touch: refreshes expiry
    clock.now += API_SESSION_SECONDS - 10
    assert store.api_session_by_token(session.token) is not None
    clock.now += API_SESSION_SECONDS + 1
    assert store.api_session_by_token(session.token) is None
    assert store.api_session_by_token("unknown") is None


def test_sessions_follow_their_api_session(store: Store) -> None:
    _setup(store)
    laptop = store.identity_by_name("laptop")
    service = store.service_by_name("llm")
    assert laptop is not None and service is not None
    api_session = store.create_api_session(laptop, "ab" * 20, [])
    info = store.create_session(api_session, service, "Dial")
    assert store.session_by_token(info.token) == info
    assert info.encryption_required and info.service_name == "llm"
    store.delete_api_session(api_session.id)
    assert store.session_by_token(info.token) is None
    assert store.session_by_token("unknown") is None


def test_upserts_are_idempotent_and_track_changes(store: Store, clock: Clock) -> None:
    _setup(store)
    first = store.last_change_at()
    assert store.upsert_identity("laptop", ["llm-clients"]) == "unchanged"
    assert store.upsert_service("llm", encryption_required=True, role_attributes=["llm"],
                                configs={"host.v1": {"protocol": "tcp", "address": "x",
                                                     "port": 1}}) == "unchanged"
    assert store.last_change_at() == first
    clock.now += 5
    assert store.upsert_service("llm", encryption_required=False, role_attributes=["llm"],
                                configs={}) == "updated"
    assert store.last_change_at() > first
    service = store.service_by_name("llm")
    assert service is not None and not service.encryption_required and not service.configs
    assert store.upsert_identity("laptop") == "unchanged"  # enroll-token path keeps roles
    ident = store.identity_by_name("laptop")
    assert ident is not None and ident.role_attributes == ("llm-clients",)


def test_routers(store: Store) -> None:
    router = store.add_router("router1", "localhost", 3022)
    assert store.routers() == [router]
    assert router.url == "tls://localhost:3022"
