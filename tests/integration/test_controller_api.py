"""Edge Client API over real HTTPS on 127.0.0.1: enrollment, auth, services, sessions."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.controller import Reply, Running, init_network, request, running_api
from tests.support.pki import client_context, foreign_client, make_csr, write_client_files
from tunneler import jwt
from tunneler.cli import main as cli
from tunneler.client.oidc import OidcClient, Tokens
from tunneler.controller import pki
from tunneler.errors import ControllerError, NotAuthorized

ROOT = Path(__file__).resolve().parents[2]
EXTRA = """
identities:
  - {name: stranger, roleAttributes: []}
"""


@pytest.fixture(scope="module", name="net")
def _net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ctrl")
    extra = base / "extra.yaml"
    extra.write_text(EXTRA)
    root = init_network(base / "net", ROOT / "policies" / "llm.yaml")
    assert cli(["network", "apply", str(root), str(extra)]) == 0
    return root


def _ca(running: Running) -> Path:
    return running.directory.pki.ca_cert


def _token(running: Running, name: str, expires_in: float = 600) -> str:
    running.store.upsert_identity(name)
    identity = running.store.identity_by_name(name)
    assert identity is not None
    return running.store.create_enrollment(identity.id, time.time() + expires_in)


async def _enroll(running: Running, token: str, csr_pem: bytes) -> Reply:
    return await request(client_context(_ca(running)), "POST",
                         f"{running.url}/enroll?method=ott&token={token}", data=csr_pem,
                         content_type="text/plain")


async def _enrolled(running: Running, name: str, tmp: Path) -> ssl.SSLContext:
    """Enroll `name` with a fresh key; a client context presenting its certificate."""
    key, csr_pem = make_csr()
    reply = await _enroll(running, _token(running, name), csr_pem)
    assert reply.status == 200, reply.body
    cert = write_client_files(tmp, name, reply.body["data"]["cert"].encode(), key)
    return client_context(_ca(running), cert)


async def _login(running: Running, context: ssl.SSLContext,
                 config_types: list[str] | None = None) -> str:
    body = b'{"configTypes": %s}' % str(config_types or []).replace("'", '"').encode()
    reply = await request(context, "POST", f"{running.url}/edge/client/v1/authenticate?method=cert",
                          data=body)
    assert reply.status == 200, reply.body
    assert reply.body["data"]["identity"]["name"]
    token: str = reply.body["data"]["token"]
    return token


def _assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    assert reply.body["error"]["code"] == code, reply.body
    assert reply.body["error"]["message"]
    assert reply.headers["ziti-instance-id"]


def test_version_and_cacerts_at_both_prefixes(net: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            context = client_context(_ca(running))
            for prefix in ("", "/edge/client/v1"):
                reply = await request(context, "GET", f"{running.url}{prefix}/version")
                assert reply.status == 200
                data = reply.body["data"]
                assert data["version"] and data["revision"] and data["buildDate"]
                assert data["apiVersions"]["edge"]["v1"]["path"] == "/edge/client/v1"
                assert reply.headers["ziti-instance-id"] == running.directory.config.instance_id
                assert int(reply.headers["Content-Length"]) > 0
            reply = await request(context, "GET", f"{running.url}/.well-known/est/cacerts")
            assert reply.headers["Content-Type"] == "application/pkcs7-mime"
            certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(reply.body))
            assert certs == [pki.load_cert(_ca(running))]
    asyncio.run(scenario())


def test_enroll_authenticate_list_and_dial(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            jwt_file = tmp_path / "laptop.jwt"
            assert cli(["network", "enroll-token", str(net), "laptop", "-o", str(jwt_file)]) == 0
            ctrl_key = pki.load_cert(running.directory.pki.cert("ctrl")).public_key()
            claims = jwt.verify(jwt_file.read_text(), ctrl_key, now=time.time())  # type: ignore[arg-type]
            assert claims["em"] == "ott" and claims["iss"].startswith("https://localhost:")
            key, csr_pem = make_csr("whatever the client says")
            reply = await _enroll(running, claims["jti"], csr_pem)
            assert reply.status == 200, reply.body
            cert = x509.load_pem_x509_certificate(reply.body["data"]["cert"].encode())
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
                claims["sub"]
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
            cert.verify_directly_issued_by(pki.load_cert(_ca(running)))
            context = client_context(_ca(running), write_client_files(
                tmp_path, "laptop", reply.body["data"]["cert"].encode(), key))
            await _dial_flow(running, context)
    asyncio.run(scenario())


async def _dial_flow(running: Running, context: ssl.SSLContext) -> None:
    base = f"{running.url}/edge/client/v1"
    token = await _login(running, context, ["intercept.v1"])
    me = await request(context, "GET", f"{base}/current-identity", token=token)
    assert me.body["data"]["name"] == "laptop"
    routers = await request(context, "GET",
                            f"{base}/current-identity/edge-routers?limit=25&offset=0", token=token)
    assert routers.body["meta"]["pagination"]["totalCount"] == 1
    assert routers.body["data"][0]["supportedProtocols"]["tls"].startswith("tls://localhost:")
    updates = await request(context, "GET", f"{base}/current-api-session/service-updates",
                            token=token)
    assert updates.body["data"]["lastChangeAt"].endswith("Z")
    services = await request(context, "GET", f"{base}/services?limit=25&offset=0", token=token)
    assert services.body["meta"]["pagination"]["totalCount"] == 2
    llm = next(s for s in services.body["data"] if s["name"] == "llm")
    assert llm["permissions"] == ["Dial"] and llm["postureQueries"] == []
    assert llm["encryptionRequired"] is True and llm["updatedAt"].endswith("Z")
    assert list(llm["config"]) == ["intercept.v1"]
    named = await request(context, "GET", f"{base}/services?filter=name=%22llm%22", token=token)
    assert [s["id"] for s in named.body["data"]] == [llm["id"]]
    both = await request(context, "GET", f"{base}/services?filter=name=%22llm%22"
                         "&configTypes=intercept.v1&configTypes=host.v1", token=token)
    assert sorted(both.body["data"][0]["config"]) == ["host.v1", "intercept.v1"]
    dial = await request(context, "POST", f"{base}/sessions", token=token,
                         data=b'{"serviceId": "%s", "type": "Dial"}' % llm["id"].encode())
    assert dial.status == 201, dial.body
    assert dial.body["data"]["token"] and dial.body["data"]["type"] == "Dial"
    assert dial.body["data"]["edgeRouters"][0]["urls"]["tls"].startswith("tls://localhost:")
    info = running.store.session_by_token(dial.body["data"]["token"])
    assert info is not None and info.service_name == "llm"
    bind = await request(context, "POST", f"{base}/sessions", token=token,
                         data=b'{"serviceId": "%s", "type": "Bind"}' % llm["id"].encode())
    _assert_error(bind, 404, "NOT_FOUND")
    assert "no Bind permission" in bind.body["error"]["message"]
    logout = await request(context, "DELETE", f"{base}/current-api-session", token=token)
    assert logout.status == 200
    _assert_error(await request(context, "GET", f"{base}/current-api-session", token=token),
                  401, "UNAUTHORIZED")
    assert running.store.session_by_token(dial.body["data"]["token"]) is None


def test_used_and_expired_tokens_are_refused(net: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            token = _token(running, "laptop")
            assert (await _enroll(running, token, make_csr()[1])).status == 200
            again = await _enroll(running, token, make_csr()[1])
            _assert_error(again, 400, "INVALID_ENROLLMENT_TOKEN")
            assert "already used" in again.body["error"]["message"]
            expired = await _enroll(running, _token(running, "laptop", -1), make_csr()[1])
            _assert_error(expired, 400, "INVALID_ENROLLMENT_TOKEN")
            assert "expired" in expired.body["error"]["message"]
            garbage = await _enroll(running, _token(running, "laptop"), b"not a csr")
            _assert_error(garbage, 400, "INVALID_ENROLLMENT_TOKEN")
            unknown = await _enroll(running, "no-such-token", make_csr()[1])
            _assert_error(unknown, 400, "INVALID_ENROLLMENT_TOKEN")
    asyncio.run(scenario())


def test_authentication_needs_an_enrolled_cert(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            url = f"{running.url}/authenticate?method=cert"
            _assert_error(await request(client_context(_ca(running)), "POST", url), 401,
                          "INVALID_AUTH")
            router = (running.directory.pki.cert("router"), running.directory.pki.key("router"))
            _assert_error(await request(client_context(_ca(running), router), "POST", url), 401,
                          "INVALID_AUTH")
            foreign = client_context(_ca(running), foreign_client(tmp_path))
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                await request(foreign, "POST", url)
            _assert_error(await request(client_context(_ca(running)), "GET",
                                        f"{running.url}/services"), 401, "UNAUTHORIZED")
            laptop = await _enrolled(running, "laptop", tmp_path)
            host = await _enrolled(running, "llm-host", tmp_path)
            token = await _login(running, laptop)
            stolen = await request(host, "GET", f"{running.url}/services", token=token)
            _assert_error(stolen, 401, "UNAUTHORIZED")
    asyncio.run(scenario())


def test_identity_without_dial_policy_gets_no_session(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            context = await _enrolled(running, "stranger", tmp_path)
            token = await _login(running, context)
            services = await request(context, "GET", f"{running.url}/services", token=token)
            assert services.body["data"] == []
            assert services.body["meta"]["pagination"]["totalCount"] == 0
            llm = running.store.service_by_name("llm")
            assert llm is not None
            reply = await request(context, "POST", f"{running.url}/sessions", token=token,
                                  data=b'{"serviceId": "%s", "type": "Dial"}' % llm.id.encode())
            _assert_error(reply, 404, "NOT_FOUND")
            assert "no Dial permission" in reply.body["error"]["message"]
            missing = await request(context, "POST", f"{running.url}/sessions", token=token,
                                    data=b'{"serviceId": "nope", "type": "Dial"}')
            _assert_error(missing, 404, "NOT_FOUND")
    asyncio.run(scenario())


def test_host_may_bind_but_not_dial(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            context = await _enrolled(running, "llm-host", tmp_path)
            token = await _login(running, context, ["all"])
            services = await request(context, "GET", f"{running.url}/services", token=token)
            llm = next(s for s in services.body["data"] if s["name"] == "llm")
            assert llm["permissions"] == ["Bind"]
            assert sorted(llm["config"]) == ["host.v1", "intercept.v1"]
            body = b'{"serviceId": "%s", "type": "%s"}'
            bind = await request(context, "POST", f"{running.url}/sessions", token=token,
                                 data=body % (llm["id"].encode(), b"Bind"))
            assert bind.status == 201
            dial = await request(context, "POST", f"{running.url}/sessions", token=token,
                                 data=body % (llm["id"].encode(), b"Dial"))
            _assert_error(dial, 404, "NOT_FOUND")
    asyncio.run(scenario())


def test_bad_requests_get_error_envelopes(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            context = await _enrolled(running, "laptop", tmp_path)
            token = await _login(running, context)
            base = running.url
            _assert_error(await request(context, "GET", f"{base}/nothing-here"), 404, "NOT_FOUND")
            _assert_error(await request(context, "PUT", f"{base}/version"), 405,
                          "METHOD_NOT_ALLOWED")
            _assert_error(await request(context, "POST", f"{base}/sessions", token=token,
                                        data=b"{not json"), 400, "COULD_NOT_PARSE_BODY")
            _assert_error(await request(context, "POST", f"{base}/sessions", token=token,
                                        data=b"x" * (2 << 20)), 413, "REQUEST_TOO_LARGE")
            _assert_error(await request(context, "GET", f"{base}/services?limit=x", token=token),
                          400, "INVALID_PAGINATION")
            _assert_error(await request(context, "GET", f"{base}/services?filter=id%3D1",
                                        token=token), 400, "INVALID_FILTER")
            _assert_error(await request(context, "POST", f"{base}/enroll?method=ca"), 400,
                          "INVALID_ENROLLMENT_METHOD")
    asyncio.run(scenario())


def test_service_updates_follow_policy_changes(tmp_path: Path) -> None:
    own = init_network(tmp_path / "net", ROOT / "policies" / "llm.yaml")  # this test mutates it

    async def scenario() -> None:
        async with running_api(own) as running:
            context = await _enrolled(running, "laptop", tmp_path)
            token = await _login(running, context)
            url = f"{running.url}/current-api-session/service-updates"
            before = (await request(context, "GET", url, token=token)).body["data"]["lastChangeAt"]
            running.store.upsert_policy("extra", kind="Dial", semantic="AnyOf",
                                        identity_roles=["#all"], service_roles=["#all"])
            after = (await request(context, "GET", url, token=token)).body["data"]["lastChangeAt"]
            assert after != before
    asyncio.run(scenario())


# -- security.md SEC-08..SEC-11 ----------------------------------------------------------------

def test_a_leaked_api_session_token_is_useless_without_the_certificate(net: Path,
                                                                       tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            laptop = await _enrolled(running, "laptop", tmp_path)
            token = await _login(running, laptop)
            anonymous = client_context(_ca(running))
            for method, path in (("GET", "/services"), ("GET", "/current-identity"),
                                 ("GET", "/current-api-session")):
                reply = await request(anonymous, method, f"{running.url}{path}", token=token)
                _assert_error(reply, 401, "REQUIRES_CERT_AUTH")
            llm = running.store.service_by_name("llm")
            assert llm is not None
            reply = await request(anonymous, "POST", f"{running.url}/sessions", token=token,
                                  data=b'{"serviceId": "%s", "type": "Dial"}' % llm.id.encode())
            _assert_error(reply, 401, "REQUIRES_CERT_AUTH")
            assert (await request(laptop, "GET", f"{running.url}/services", token=token)
                    ).status == 200
    asyncio.run(scenario())


def test_hostile_bodies_get_a_400_or_415_never_a_500(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            context = await _enrolled(running, "laptop", tmp_path)
            token = await _login(running, context)
            url = f"{running.url}/sessions"
            for body in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
                reply = await request(context, "POST", url, token=token, data=body)
                _assert_error(reply, 400, "COULD_NOT_PARSE_BODY")
            llm = running.store.service_by_name("llm")
            assert llm is not None
            valid = b'{"serviceId": "%s", "type": "Dial"}' % llm.id.encode()
            for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
                reply = await request(context, "POST", url, token=token, data=valid,
                                      content_type=content_type)
                _assert_error(reply, 415, "UNSUPPORTED_MEDIA_TYPE")
            assert (await request(context, "POST", url, token=token, data=valid)).status == 201
            enroll = await request(client_context(_ca(running)), "POST",
                                   f"{running.url}/enroll?method=ott&token={_token(running, 'x')}",
                                   data=make_csr()[1], content_type="application/json")
            _assert_error(enroll, 415, "UNSUPPORTED_MEDIA_TYPE")
    asyncio.run(scenario())


def test_enrollment_checks_the_token_before_the_csr_and_a_bad_csr_burns_nothing(
        net: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            unknown = await _enroll(running, "no-such-token", b"garbage, not a CSR")
            _assert_error(unknown, 400, "INVALID_ENROLLMENT_TOKEN")
            assert "unknown or already used" in unknown.body["error"]["message"]
            token = _token(running, "laptop")
            garbage = await _enroll(running, token, b"garbage, not a CSR")
            _assert_error(garbage, 400, "INVALID_ENROLLMENT_TOKEN")
            assert "certificate request" in garbage.body["error"]["message"]
            assert (await _enroll(running, token, make_csr()[1])).status == 200
    asyncio.run(scenario())


def test_not_found_answers_name_no_identity_and_do_not_tell_missing_from_forbidden(
        net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            context = await _enrolled(running, "stranger", tmp_path)
            token = await _login(running, context)
            llm = running.store.service_by_name("llm")
            assert llm is not None
            answers = []
            for service_id in (llm.id, "0123456789abcdef"):
                reply = await request(context, "POST", f"{running.url}/sessions", token=token,
                                      data=b'{"serviceId": "%s", "type": "Dial"}' %
                                      service_id.encode())
                _assert_error(reply, 404, "NOT_FOUND")
                message = reply.body["error"]["message"]
                assert "stranger" not in message and "llm" not in message
                answers.append(message.replace(service_id, "ID"))
            assert answers[0] == answers[1]
    asyncio.run(scenario())


# -- what libziti 1.x asks (docs/compatibility.md) -----------------------------------------------

def test_endpoints_libziti_1x_calls(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            anonymous = client_context(_ca(running))
            version = (await request(anonymous, "GET", f"{running.url}/version")).body["data"]
            assert version["capabilities"] == ["OIDC_AUTH"]
            assert version["apiVersions"]["edge-client"] == version["apiVersions"]["edge"]
            assert version["apiVersions"]["edge-oidc"]["v1"]["path"] == "/oidc"
            signers = await request(anonymous, "GET", f"{running.url}/external-jwt-signers")
            assert signers.status == 200 and signers.body["data"] == []
            assert signers.body["meta"]["pagination"]["totalCount"] == 0
            laptop = await _enrolled(running, "laptop", tmp_path)
            token = await _login(running, laptop)
            base = f"{running.url}/edge/client/v1"
            everything = await request(laptop, "GET", f"{base}/services?configTypes=all",
                                       token=token)
            llm = next(s for s in everything.body["data"] if s["name"] == "llm")
            assert sorted(llm["config"]) == ["host.v1", "intercept.v1"]
            routers = await request(laptop, "GET", f"{base}/services/{llm['id']}/edge-routers"
                                    "?offset=0&limit=100", token=token)
            assert routers.status == 200, routers.body
            assert routers.body["data"]["edgeRouters"][0]["supportedProtocols"]["tls"]
            hidden = await request(laptop, "GET", f"{base}/services/0123456789abcdef/edge-routers",
                                   token=token)
            _assert_error(hidden, 404, "NOT_FOUND")
            created = await request(laptop, "POST", f"{base}/sessions", token=token,
                                    data=b'{"serviceId": "%s", "type": "Dial"}' %
                                    llm["id"].encode())
            session_id = created.body["data"]["id"]
            again = await request(laptop, "GET", f"{base}/sessions/{session_id}", token=token)
            assert again.status == 200 and again.body["data"]["token"] == \
                created.body["data"]["token"]
            other = await _login(running, laptop)
            _assert_error(await request(laptop, "GET", f"{base}/sessions/{session_id}",
                                        token=other), 404, "NOT_FOUND")
            controllers = await request(laptop, "GET", f"{base}/controllers", token=token)
            [entry] = controllers.body["data"]
            assert entry["apiAddresses"]["edge-client"][0] == {
                "url": running.directory.config.controller_url + "/edge/client/v1",
                "version": "v1"}
            assert entry["isOnline"] is True and entry["certPem"].startswith("-----BEGIN")
    asyncio.run(scenario())


def test_401s_carry_www_authenticate_challenges(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            laptop = await _enrolled(running, "laptop", tmp_path)
            missing = await request(laptop, "GET", f"{running.url}/services")
            _assert_error(missing, 401, "UNAUTHORIZED")
            assert missing.headers["WWW-Authenticate"] == (
                'zt-session realm="zt-session" error="missing" '
                'error_description="no matching token was provided",'
                'Bearer realm="openziti-oidc" error="missing" '
                'error_description="no matching token was provided"')
            invalid = await request(laptop, "GET", f"{running.url}/services", token="nope")
            assert invalid.headers["WWW-Authenticate"] == (
                'zt-session realm="zt-session" error="invalid" '
                'error_description="token is invalid"')
    asyncio.run(scenario())


# -- OIDC sessions (issue 8 item 3) ------------------------------------------------------------

async def _oidc_tokens(context: ssl.SSLContext, running: Running) -> Tokens:
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        return await OidcClient(http, f"{running.url}/oidc").login()


async def _oidc_refresh(context: ssl.SSLContext, running: Running, tokens: Tokens) -> Tokens:
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        return await OidcClient(http, f"{running.url}/oidc").refresh(tokens)


def test_oidc_login_gives_a_bearer_session_bound_to_the_certificate(net: Path,
                                                                     tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            laptop = await _enrolled(running, "laptop", tmp_path)
            host = await _enrolled(running, "llm-host", tmp_path)
            tokens = await _oidc_tokens(laptop, running)
            session = running.store.api_session_by_id(tokens.api_session_id)
            assert session is not None and session.auth_method == "oidc"
            base = f"{running.url}/edge/client/v1"
            me = await request(laptop, "GET", f"{base}/current-identity", bearer=tokens.access)
            assert me.status == 200 and me.body["data"]["name"] == "laptop"
            stolen = await request(host, "GET", f"{base}/services", bearer=tokens.access)
            _assert_error(stolen, 401, "UNAUTHORIZED")
            anonymous = await request(client_context(_ca(running)), "GET", f"{base}/services",
                                      bearer=tokens.access)
            _assert_error(anonymous, 401, "REQUIRES_CERT_AUTH")
            with pytest.raises(NotAuthorized):
                await _oidc_refresh(host, running, tokens)  # refresh needs the bound cert
            fresh = await _oidc_refresh(laptop, running, tokens)
            assert fresh.api_session_id == tokens.api_session_id
            assert fresh.access != tokens.access
            running.store.delete_api_session(tokens.api_session_id)  # revoked
            gone = await request(laptop, "GET", f"{base}/services", bearer=fresh.access)
            _assert_error(gone, 401, "UNAUTHORIZED")
            assert 'Bearer realm="openziti-oidc" error="invalid"' in \
                gone.headers["WWW-Authenticate"]
            with pytest.raises(NotAuthorized):
                await _oidc_refresh(laptop, running, fresh)
    asyncio.run(scenario())


def test_oidc_refuses_foreign_certificates_codes_and_grants(net: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_api(net) as running:
            stranger = client_context(_ca(running), foreign_client(tmp_path))
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ControllerError)):
                await _oidc_tokens(stranger, running)
            with pytest.raises(NotAuthorized):  # no certificate: the login step refuses
                await _oidc_tokens(client_context(_ca(running)), running)
            laptop = await _enrolled(running, "laptop", tmp_path)
            token_url = f"{running.url}/oidc/oauth/token"
            for form, error in ((b"grant_type=password&username=a", "unsupported_grant_type"),
                                (b"grant_type=authorization_code&code=nope", "invalid_grant"),
                                (b"grant_type=refresh_token&refresh_token=x.y.z",
                                 "invalid_grant")):
                reply = await request(laptop, "POST", token_url, data=form,
                                      content_type="application/x-www-form-urlencoded")
                assert reply.status == 400 and reply.body["error"] == error, reply.body
            configuration = await request(laptop, "GET",
                                          f"{running.url}/oidc/.well-known/openid-configuration")
            assert configuration.body["token_endpoint"] == token_url
            keys = await request(laptop, "GET", configuration.body["jwks_uri"])
            assert keys.body["keys"][0]["alg"] == "RS256"
    asyncio.run(scenario())
