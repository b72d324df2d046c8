"""Certificate renewal (issue 14): the controller's extend/extend-verify, and our client's
renewal with its failure modes, against the Edge Client API over real HTTPS on 127.0.0.1.

The controller runs in-process (`running_api`, ephemeral port); each client is a real
`ZitiContext` on an enrolled identity file (the identity's ztAPI points at that port).
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.controller import init_network, request, running_api
from tests.support.pki import client_context, make_csr
from tunneler.cli import main as cli
from tunneler.client.context import ZitiContext
from tunneler.client.renewal import pending_path
from tunneler.controller import network, pki
from tunneler.enroll import enroll
from tunneler.errors import ControllerError
from tunneler.identity import Identity, load_identity, save_identity

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(name="net")
def _net(tmp_path: Path) -> Path:
    root = init_network(tmp_path / "net", ROOT / "policies" / "llm.yaml")
    config = json.loads((root / "network.json").read_text())
    config["client_cert_seconds"] = 600
    (root / "network.json").write_text(json.dumps(config))
    return root


def _port(net: Path) -> int:
    return network.load(net).config.controller_port


async def _enrolled(net: Path, tmp_path: Path, name: str) -> Path:
    """`network enroll-token` + `enroll()`: an identity file in `tmp_path`."""
    jwt_file = tmp_path / f"{name}.jwt"
    assert cli(["network", "enroll-token", str(net), name, "-o", str(jwt_file)]) == 0
    path = tmp_path / f"{name}.json"
    save_identity(await enroll(jwt_file), path)
    return path


@asynccontextmanager
async def _context(path: Path) -> AsyncIterator[ZitiContext]:
    ctx = ZitiContext(path)
    await ctx.start()
    try:
        yield ctx
    finally:
        await ctx.close()


def _cert(path: Path) -> x509.Certificate:
    return load_identity(path).certificate


def test_renewal_replaces_the_certificate_and_the_old_one_stops_authenticating(
        net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net, port=_port(net)) as running:
            path = await _enrolled(net, tmp_path, "laptop")
            before = load_identity(path)
            async with _context(path) as ctx:
                session = ctx.ctrl.api_session
                assert session is not None
                await ctx.renew_certificate()
                after = load_identity(path)
                assert after.fingerprint != before.fingerprint
                assert after.key_pem != before.key_pem  # a new key pair
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                assert not pending_path(path).exists()
                assert ctx.renewal is not None and ctx.renewal.renewed_at is not None
                # the same API session goes on with the new certificate
                assert ctx.ctrl.api_session is not None
                assert ctx.ctrl.api_session.id == session.id
                assert sorted(ctx.services) == ["llm", "udp-echo"]
                await ctx.refresh_services()
            old = client_context(running.directory.pki.ca_cert,
                                 _files(tmp_path, "old", before))
            refused = await request(old, "POST", f"{running.url}/authenticate?method=cert")
            assert refused.status == 401
            async with _context(path) as again:  # a new run authenticates with the new cert
                assert again.ctrl.api_session is not None
    asyncio.run(scenario())


def _files(tmp_path: Path, name: str, identity: Identity) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.write_text(identity.cert_pem)
    key.write_text(identity.key_pem)
    key.chmod(0o600)
    return cert, key


def test_a_crash_between_extend_and_verify_leaves_a_working_identity_and_resumes(
        net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net, port=_port(net)):
            path = await _enrolled(net, tmp_path, "laptop")
            before = load_identity(path)
            async with _context(path) as ctx:
                assert ctx.renewal is not None
                csr, key = ctx.renewal.new_request(ctx.identity)
                authenticator = await ctx.ctrl.authenticator_id()
                cert = await ctx.ctrl.extend(authenticator, csr)
                ctx.renewal.prepare(ctx.identity, cert, key)  # ... and the process dies here
            assert load_identity(path).fingerprint == before.fingerprint  # still the old one
            assert pending_path(path).exists()
            async with _context(path) as resumed:  # the next start verifies and adopts it
                assert resumed.identity.fingerprint != before.fingerprint
                assert sorted(resumed.services) == ["llm", "udp-echo"]
            assert load_identity(path).cert_pem.strip() == cert.strip()
            assert not pending_path(path).exists()
    asyncio.run(scenario())


def test_a_crash_after_verify_adopts_the_renewed_identity(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net, port=_port(net)):
            path = await _enrolled(net, tmp_path, "laptop")
            async with _context(path) as ctx:
                assert ctx.renewal is not None
                csr, key = ctx.renewal.new_request(ctx.identity)
                authenticator = await ctx.ctrl.authenticator_id()
                cert = await ctx.ctrl.extend(authenticator, csr)
                ctx.renewal.prepare(ctx.identity, cert, key)
                await ctx.ctrl.extend_verify(authenticator, cert)  # ... then the process dies
            async with _context(path) as resumed:  # the old cert is refused: adopt the new
                assert resumed.identity.cert_pem.strip() == cert.strip()
                assert sorted(resumed.services) == ["llm", "udp-echo"]
            assert not pending_path(path).exists()
    asyncio.run(scenario())


def test_renewal_while_the_controller_is_down_fails_cleanly_and_works_when_it_returns(
        net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net, port=_port(net)):
            path = await _enrolled(net, tmp_path, "laptop")
        before = load_identity(path)
        async with running_api(net, port=_port(net)):
            ctx = ZitiContext(path)
            await ctx.start()
        try:  # the controller is gone now
            with pytest.raises(ControllerError):
                await ctx.renew_certificate()
            assert load_identity(path).fingerprint == before.fingerprint
            assert not pending_path(path).exists()
            async with running_api(net, port=_port(net)):
                await ctx.renew_certificate()
            assert load_identity(path).fingerprint != before.fingerprint
        finally:
            await ctx.close()
    asyncio.run(scenario())


def test_the_controller_refuses_foreign_csrs_other_certificates_and_revoked_identities(
        net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net, port=_port(net)) as running:
            laptop = await _enrolled(net, tmp_path, "laptop")
            host = await _enrolled(net, tmp_path, "llm-host")
            async with _context(laptop) as ctx:
                authenticator = await ctx.ctrl.authenticator_id()
                host_id = load_identity(host).name_hint
                _key, foreign = make_csr(host_id)
                with pytest.raises(ControllerError, match="another identity"):
                    await ctx.ctrl.extend(authenticator, foreign.decode())
                own = make_csr(load_identity(laptop).name_hint)[1].decode()
                async with _context(host) as other:
                    with pytest.raises(ControllerError, match="NOT_FOUND"):
                        await other.ctrl.extend(authenticator, own)
                cert = await ctx.ctrl.extend(authenticator, own)
                ca = pki.cert_pem(pki.load_cert(running.directory.pki.ca_cert)).decode()
                with pytest.raises(ControllerError, match="INVALID_CERT"):
                    await ctx.ctrl.extend_verify(authenticator, ca)
                assert cli(["network", "delete-identity", str(net), "laptop"]) == 0
                with pytest.raises(ControllerError):
                    await ctx.ctrl.extend_verify(authenticator, cert)
                with pytest.raises(ControllerError):
                    await ctx.renew_certificate()
            listed = json.loads(_list(net))
            assert [row["name"] for row in listed] == ["llm-host"]
            assert listed[0]["certLifetime"] == "10m" and listed[0]["certExpires"]
    asyncio.run(scenario())


def _list(net: Path) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["network", "list", str(net), "identities", "--json"]) == 0
    return out.getvalue()


def test_renewal_is_due_at_two_thirds_of_the_lifetime(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net, port=_port(net)):
            path = await _enrolled(net, tmp_path, "laptop")
        cert = _cert(path)
        start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        assert 600 <= end - start <= 660  # 10 min, back-dated a tenth at most
        from tunneler.client.renewal import renewal_due
        assert renewal_due(cert) == pytest.approx(start + (end - start) * 2 / 3)
        assert renewal_due(cert) > time.time()
    asyncio.run(scenario())
