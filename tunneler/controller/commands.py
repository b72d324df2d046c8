"""`tunneler network init|add-router|serve|serve-router|apply|list|delete-identity|enroll-token`:
the embedded network's CLI handlers.

`apply` and `enroll-token` work on the state database directly (no server needed); they are
safe while `serve` runs because the database is in WAL mode with short write transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path

from tunneler import aio, jwt
from tunneler.controller import listing, network, pki, policyfile
from tunneler.controller.api import ControllerApi
from tunneler.controller.models import Router
from tunneler.controller.store import Store
from tunneler.durations import parse_duration
from tunneler.errors import ConfigError
from tunneler.log import get_logger

log = get_logger("controller")

MIN_TOKEN_SECONDS = 60
MAX_TOKEN_SECONDS = 30 * 24 * 3600


def cmd_init(args: argparse.Namespace) -> int:
    """Create a network directory: CA, controller/router certs, state DB, first router."""
    root = Path(args.dir)
    config = network.validate({
        "hostname": args.hostname, "controller_port": args.controller_port,
        "router_port": args.router_port, "router_name": args.router_name,
        "instance_id": pki.new_instance_id(), "oidc": not args.no_oidc,
        "access_token_seconds": parse_duration(args.access_token_lifetime,
                                               "--access-token-lifetime",
                                               *network.ACCESS_TOKEN_RANGE),
        "refresh_token_seconds": parse_duration(args.refresh_token_lifetime,
                                                "--refresh-token-lifetime",
                                                *network.REFRESH_TOKEN_RANGE),
        "client_cert_seconds": parse_duration(args.client_cert_lifetime,
                                              "--client-cert-lifetime",
                                              *network.CLIENT_CERT_RANGE)})
    network.prepare(root)
    directory = network.NetworkDir(root, config)
    pki.create_pki(directory.pki, config.hostname)
    store = Store(directory.state_db)
    try:
        store.add_router(config.router_name, config.hostname, config.router_port)
    finally:
        store.close()
    os.chmod(directory.state_db, 0o600)
    network.write_config(root, config)
    log.info("network.created", dir=str(root), controller=config.controller_url,
             router=f"tls://{config.hostname}:{config.router_port}")
    print(f"network created in {root}: controller {config.controller_url}, "
          f"router {config.router_name} tls://{config.hostname}:{config.router_port}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Validate a YAML file and upsert its identities, services and service policies."""
    directory = network.load(Path(args.dir))
    spec = policyfile.load(Path(args.file))
    store = Store(directory.state_db)
    try:
        changes = policyfile.apply(store, spec, prune=args.prune)
    finally:
        store.close()
    for kind, name, status in changes:
        print(f"{kind} {name}: {status}")
    log.info("network.file_applied", file=str(args.file),
             changed=sum(status != "unchanged" for _, _, status in changes))
    return 0


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def cmd_enroll_token(args: argparse.Namespace) -> int:
    """Create the identity if missing and write a one-time enrollment JWT."""
    if not MIN_TOKEN_SECONDS <= args.expires_in <= MAX_TOKEN_SECONDS:
        raise ConfigError(f"--expires-in: must be {MIN_TOKEN_SECONDS}..{MAX_TOKEN_SECONDS} s")
    name = policyfile.entity_name(args.identity, "identity name")
    directory = network.load(Path(args.dir))
    key = directory.signing_key()
    now = time.time()
    store = Store(directory.state_db)
    try:
        store.upsert_identity(name)
        identity = store.identity_by_name(name)
        assert identity is not None
        expires_at = int(now + args.expires_in)
        jti = store.create_enrollment(identity.id, expires_at)
    finally:
        store.close()
    token = jwt.encode({"em": "ott", "iss": directory.config.controller_url, "sub": identity.id,
                        "jti": jti, "exp": expires_at, "aud": ""}, key)
    if args.output:
        _write_secret(Path(args.output), token + "\n")
    else:
        sys.stdout.write(token + "\n")
    log.info("network.enrollment_created", identity=identity.name, expires_at=expires_at)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Show routers, identities, services, policies or API sessions of a network."""
    directory = network.load(Path(args.dir))
    store = Store(directory.state_db)
    try:
        items = listing.rows(store, args.kind,
                             client_cert_seconds=directory.config.client_cert_seconds)
    finally:
        store.close()
    sys.stdout.write(json.dumps(items, indent=2) + "\n" if args.json else listing.render(items))
    return 0


def cmd_delete_identity(args: argparse.Namespace) -> int:
    """Revoke an identity: it and its certificates, API sessions and sessions are deleted."""
    directory = network.load(Path(args.dir))
    store = Store(directory.state_db)
    try:
        deleted = store.delete_identity(args.identity)
    finally:
        store.close()
    if not deleted:
        raise ConfigError(f"no identity named {args.identity!r} in {args.dir}")
    log.info("network.identity_deleted", identity=args.identity)
    print(f"identity {args.identity}: deleted (routers close its channels within seconds)")
    return 0


def cmd_add_router(args: argparse.Namespace) -> int:
    """Add an edge router: its certificate from the network's CA and its row in state.db."""
    directory = network.load(Path(args.dir))
    name = network.check_router_name(args.name)
    hostname = args.hostname or directory.config.hostname
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be a port number 1..65535")
    store = Store(directory.state_db)
    try:
        routers = store.routers()
        if any(router.name == name for router in routers):
            raise ConfigError(f"router {name!r} already exists in {args.dir}")
        # `serve` binds every router and the controller on one --listen address: ports only
        taken = {r.port: f"router {r.name}" for r in routers}
        taken[directory.config.controller_port] = "the controller"
        if args.port in taken:
            raise ConfigError(f"port {args.port} is already used by {taken[args.port]}; "
                              "choose another --port")
        pki.add_server_cert(directory.pki, directory.router_cert(name), hostname)
        router = store.add_router(name, hostname, args.port)
    finally:
        store.close()
    log.info("network.router_added", router=name, url=router.url)
    print(f"router {name} {router.url} added: `tunneler network serve {args.dir}` runs it with "
          f"the others, `tunneler network serve-router {args.dir} {name}` on its own")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the controller API and every edge router (or only the API) until SIGTERM/SIGINT."""
    directory = network.load(Path(args.dir))
    routers: list[str] | None = [] if args.controller_only else None
    return aio.run(lambda stop: serve(directory, args.listen, stop, routers=routers))


def cmd_serve_router(args: argparse.Namespace) -> int:
    """Run one edge router of the directory (no controller) until SIGTERM/SIGINT."""
    directory = network.load(Path(args.dir))
    return aio.run(lambda stop: serve(directory, args.listen, stop, controller=False,
                                      routers=[args.name]))


def _chosen_routers(store: Store, names: Sequence[str] | None) -> list[Router]:
    known = {router.name: router for router in store.routers()}
    if names is None:
        return list(known.values())
    missing = [name for name in names if name not in known]
    if missing:
        raise ConfigError(f"no router named {', '.join(map(repr, missing))}; the network has "
                          f"{', '.join(known) or 'none'} (`tunneler network add-router`)")
    return [known[name] for name in names]


async def serve(directory: network.NetworkDir, listen: str, stop: asyncio.Event, *,
                controller: bool = True, routers: Sequence[str] | None = None) -> int:
    """Serve the controller API (if `controller`) and the named routers (None: every one)
    until `stop` is set; returns the exit code. Separate processes may serve parts of one
    directory: they share state.db."""
    from tunneler.router.server import EdgeRouter  # imported lazily: router is optional for API

    config = directory.config
    store = Store(directory.state_db)
    try:
        chosen = _chosen_routers(store, routers)
    except ConfigError:
        store.close()
        raise
    api = ControllerApi(store, directory.api_settings(), clock=time.time) if controller else None
    token_key = directory.signing_key().public_key() if config.oidc else None
    edges = [EdgeRouter(store, pki.server_ssl_context(directory.pki,
                                                      directory.router_cert(router.name),
                                                      require_client_cert=True),
                        name=router.name, token_key=token_key) for router in chosen]
    try:
        if api is not None:
            await _listen(api.start(listen, config.controller_port, pki.server_ssl_context(
                directory.pki, "ctrl", require_client_cert=False)), listen,
                config.controller_port)
        for router, edge in zip(chosen, edges, strict=True):
            await _listen(edge.start(listen, router.port), listen, router.port)
        log.info("network.serving", controller=config.controller_url if api else None,
                 routers=[router.url for router in chosen])
        await stop.wait()
    finally:
        for edge in edges:
            await edge.close()
        if api is not None:
            await api.close()
        store.close()
        log.info("network.stopped")
    return 0


async def _listen(starting: Awaitable[object], host: str, port: int) -> None:
    try:
        await starting
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
