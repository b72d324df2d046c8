"""`tunneler enroll` against the embedded controller over real HTTPS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from tunneler import jwt
from tunneler.cli import main as cli
from tunneler.client.ctrl import ControllerClient
from tunneler.controller import network, pki
from tunneler.controller.api import ControllerApi
from tunneler.controller.store import Store
from tunneler.enroll import enroll
from tunneler.errors import EnrollmentError
from tunneler.identity import load_identity, save_identity


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(name="net")
def _net(tmp_path: Path) -> Path:
    directory = tmp_path / "net"
    assert cli(["network", "init", str(directory), "--hostname", "localhost",
                "--controller-port", str(_free_port()), "--router-port", str(_free_port())]) == 0
    return directory


def _token(net: Path, identity: str, tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / f"{identity}-{time.monotonic_ns()}.jwt"
    assert cli(["network", "enroll-token", str(net), identity, "-o", str(out), *extra]) == 0
    return out


def _set_oidc(net: Path, oidc: bool) -> None:
    """Turn the network's OIDC provider on or off (network.json, as an operator would)."""
    config = json.loads((net / "network.json").read_text())
    config["oidc"] = oidc
    (net / "network.json").write_text(json.dumps(config))


def _with_controller(net: Path, scenario: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        directory = network.load(net)
        store = Store(directory.state_db)
        api = ControllerApi(store, directory.api_settings(), clock=time.time)
        context = pki.server_ssl_context(directory.pki, "ctrl", require_client_cert=False)
        await api.start("127.0.0.1", directory.config.controller_port, context)
        try:
            await scenario()
        finally:
            await api.close()
            store.close()

    asyncio.run(run())


def test_enroll_then_authenticate(net: Path, tmp_path: Path) -> None:
    jwt_file = _token(net, "laptop", tmp_path)
    out = tmp_path / "laptop.json"

    async def scenario() -> None:
        identity = await enroll(jwt_file)
        save_identity(identity, out)
        async with ControllerClient(load_identity(out)) as client:
            session = await client.authenticate()
            assert session.identity_name == "laptop"
        with pytest.raises(EnrollmentError, match="already used"):
            await enroll(jwt_file)

    _with_controller(net, scenario)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = json.loads(out.read_text())
    assert data["ztAPI"].startswith("https://localhost:")
    assert data["id"]["key"].startswith("-----BEGIN EC PRIVATE KEY-----")
    assert data["id"]["ca"].count("BEGIN CERTIFICATE") >= 1


def test_expired_token_refused_before_contacting_anyone(net: Path, tmp_path: Path) -> None:
    directory = network.load(net)
    key = pki.load_key(directory.pki.key("ctrl"))
    assert isinstance(key, rsa.RSAPrivateKey)
    jwt_file = tmp_path / "expired.jwt"
    jwt_file.write_text(jwt.encode({"em": "ott", "iss": directory.config.controller_url,
                                    "sub": "x", "jti": "y", "exp": int(time.time()) - 120}, key))
    with pytest.raises(EnrollmentError, match="expired"):
        asyncio.run(enroll(jwt_file))


def test_forged_token_refused(net: Path, tmp_path: Path) -> None:
    jwt_file = _token(net, "laptop", tmp_path)
    header, claims, signature = jwt_file.read_text().strip().split(".")
    payload = json.loads(base64.urlsafe_b64decode(claims + "=="))
    payload["sub"] = "someone-else"
    forged_claims = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    jwt_file.write_text(f"{header}.{forged_claims}.{signature}\n")

    async def scenario() -> None:
        with pytest.raises(EnrollmentError, match="signature"):
            await enroll(jwt_file)

    _with_controller(net, scenario)


def test_cli_reports_clear_errors(net: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                  ) -> None:
    bad = tmp_path / "bad.jwt"
    bad.write_text("not-a-jwt")
    assert cli(["enroll", "--jwt", str(bad), "--identity", str(tmp_path / "x.json")]) == 1
    assert "malformed JWT" in capsys.readouterr().err
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    assert cli(["enroll", "--jwt", str(bad), "--identity", str(existing)]) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("oidc", [True, False], ids=["oidc", "legacy"])
def test_controller_client_pages_refreshes_and_reauthenticates(net: Path, tmp_path: Path,
                                                               oidc: bool) -> None:
    policy = tmp_path / "many.yaml"
    policy.write_text(yaml.safe_dump({
        "identities": [{"name": "laptop", "roleAttributes": ["clients"]}],
        "services": [{"name": f"svc{i:02d}", "roleAttributes": ["many"], "configs": {}}
                     for i in range(30)],
        "servicePolicies": [{"name": "dial-many", "type": "Dial", "identityRoles": ["#clients"],
                             "serviceRoles": ["#many"]}],
    }))
    assert cli(["network", "apply", str(net), str(policy)]) == 0
    _set_oidc(net, oidc)
    jwt_file = _token(net, "laptop", tmp_path)

    async def scenario() -> None:
        identity = await enroll(jwt_file)
        async with ControllerClient(identity) as client:
            first = await client.authenticate()
            assert client.auth_method == ("oidc" if oidc else "legacy")
            assert first.identity_name == "laptop"
            services = await client.services()  # 30 services: two pages of 25
            assert sorted(s.name for s in services) == [f"svc{i:02d}" for i in range(30)]
            refreshed = await client.refresh_api_session()
            assert refreshed.id == first.id
            assert (refreshed.token == first.token) is not oidc  # OIDC: a new access token
            assert refreshed.expires_at is not None and first.expires_at is not None
            assert refreshed.expires_at >= first.expires_at
            store = Store(network.load(net).state_db)
            try:  # the controller forgets the session (an admin revoked it) ...
                store.delete_api_session(first.id)
            finally:
                store.close()
            assert len(await client.services()) == 30  # UNAUTHORIZED → re-authenticated
            assert client.api_session is not None
            assert client.api_session.id != first.id

    _with_controller(net, scenario)
