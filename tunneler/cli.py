"""Command line entry point: argparse subcommands, each run by a function in its own module.

Handlers are named by dotted path and imported only when their subcommand runs, so
`tunneler --help` stays fast and a missing optional piece never breaks unrelated commands.
Every handler has the signature `handler(args: argparse.Namespace) -> int` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

from tunneler import __version__, log
from tunneler.errors import TunnelerError
from tunneler.ops.options import add_arguments as add_ops_arguments

Handler = Callable[[argparse.Namespace], int]


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, target: str,
         help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=target)
    return parser


def _network_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    network = sub.add_parser("network", help="the embedded network: controller + edge routers")
    nsub = network.add_subparsers(dest="network_command", required=True)
    init = _add(nsub, "init", "tunneler.controller.commands:cmd_init",
                "create a network directory: CA, state database and a first edge router")
    init.add_argument("dir", help="network directory to create")
    init.add_argument("--hostname", default="localhost",
                      help="name every client uses to reach controller and router (must resolve)")
    init.add_argument("--controller-port", type=int, default=1280)
    init.add_argument("--router-port", type=int, default=3022)
    init.add_argument("--router-name", default="router1")
    init.add_argument("--access-token-lifetime", default="30m",
                      help="lifetime of OIDC access tokens, e.g. 30m or 90s (default 30m)")
    init.add_argument("--refresh-token-lifetime", default="24h",
                      help="lifetime of OIDC refresh tokens and their API sessions (default 24h)")
    init.add_argument("--client-cert-lifetime", default="365d",
                      help="lifetime of the client certificates enrollment and renewal issue, "
                      "e.g. 365d or 90s (default 365d); clients renew at two thirds of it")
    init.add_argument("--no-oidc", action="store_true",
                      help="serve legacy API sessions only (no OIDC_AUTH in /version)")
    added = _add(nsub, "add-router", "tunneler.controller.commands:cmd_add_router",
                 "add an edge router: a certificate from the network's CA and its address")
    added.add_argument("dir")
    added.add_argument("name")
    added.add_argument("--port", type=int, required=True, help="the router's TLS port")
    added.add_argument("--hostname", help="name clients reach it by (default: the network's)")
    serve = _add(nsub, "serve", "tunneler.controller.commands:cmd_serve",
                 "run the controller and every edge router in the foreground until SIGTERM")
    serve.add_argument("dir")
    serve.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--controller-only", action="store_true",
                       help="run the controller API only (routers: `network serve-router`)")
    one = _add(nsub, "serve-router", "tunneler.controller.commands:cmd_serve_router",
               "run one edge router of the network in the foreground until SIGTERM")
    one.add_argument("dir")
    one.add_argument("name")
    one.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    one.add_argument("--log-level", default="info")
    apply = _add(nsub, "apply", "tunneler.controller.commands:cmd_apply",
                 "load identities, services, configs and service policies from a YAML file")
    apply.add_argument("dir")
    apply.add_argument("file")
    apply.add_argument("--prune", action="store_true",
                       help="also delete the service policies the file does not name (their "
                       "circuits close within seconds)")
    listed = _add(nsub, "list", "tunneler.controller.commands:cmd_list",
                  "show the network's routers, identities, services, policies or API sessions")
    listed.add_argument("dir")
    listed.add_argument("kind", choices=("routers", "identities", "services", "policies",
                                         "sessions"))
    listed.add_argument("--json", action="store_true", help="JSON instead of a table")
    delete = _add(nsub, "delete-identity", "tunneler.controller.commands:cmd_delete_identity",
                  "revoke an identity: delete it, its certificates and sessions")
    delete.add_argument("dir")
    delete.add_argument("identity")
    token = _add(nsub, "enroll-token", "tunneler.controller.commands:cmd_enroll_token",
                 "create the identity if missing and write a one-time enrollment JWT")
    token.add_argument("dir")
    token.add_argument("identity")
    token.add_argument("-o", "--output", help="JWT file to write (default: stdout)")
    token.add_argument("--expires-in", type=int, default=3 * 3600,
                       help="token lifetime in seconds (default 3 h)")


def _ops_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands that talk to a running daemon over its control socket."""
    commands = [
        ("intercepts", "cmd_intercepts",
         "list intercepts: address, VIP, service, ports, identity, router, flows, last error"),
        ("status", "cmd_status",
         "daemon health and counters; exit 0 healthy, 1 unhealthy, 2 no daemon"),
        ("log-level", "cmd_log_level", "change the daemon's log level now"),
        ("refresh", "cmd_refresh", "re-fetch services from the controller now"),
    ]
    for name, handler, help_text in commands:
        parser = _add(sub, name, f"tunneler.ops.commands:{handler}", help_text)
        parser.add_argument("--control-socket", default="/run/tunneler/tunneler.sock",
                            help="the daemon's control socket (default %(default)s)")
        if name in ("intercepts", "status"):
            parser.add_argument("--json", action="store_true", help="stable JSON output")
        if name == "log-level":
            parser.add_argument("level", choices=["trace", "debug", "info", "warning", "error"])


def _add_refresh_interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refresh-interval", type=float, default=60.0,
                        help="seconds between service list refreshes (default 60)")


def _run_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = _add(sub, "run", "tunneler.daemon:cmd_run",
               "intercept mode: TUN device, DNS for service names, every flow over the overlay "
               "(root or CAP_NET_ADMIN)")
    run.add_argument("--identity", action="append", default=[], help="identity JSON (repeatable)")
    run.add_argument("--identity-dir", help="load every *.json identity in this directory")
    run.add_argument("--tun-name", default="tunneler0")
    run.add_argument("--dns-ip-range", default="100.64.0.1/10",
                     help="TUN address/prefix; DNS is the next address, VIPs the rest")
    run.add_argument("--dns-upstream", action="append", default=[], metavar="IP[:PORT]",
                     help="resolver for other names (repeatable; default: the system's)")
    run.add_argument("--no-dns-config", action="store_true",
                     help="leave the system resolver configuration alone")
    run.add_argument("--dns-route-all", action="store_true",
                     help="systemd-resolved: route every name to us (~.), not only intercepts")
    run.add_argument("--tcp-redirect", action="store_true",
                     help="let nftables DNAT this host's TCP to intercepts straight to our "
                          "listener (faster; an unreachable service resets after connect)")
    _add_refresh_interval(run)
    run.add_argument("--mtu", type=int, default=65000)
    run.add_argument("--runtime-dir", default="/run/tunneler", help="directory of journal.json")
    run.add_argument("--resolv-conf", default="/etc/resolv.conf")
    run.add_argument("--max-tcp-flows", type=int, default=4096)
    run.add_argument("--max-pending-dials", type=int, default=512)
    run.add_argument("--max-udp-flows", type=int, default=1024)
    run.add_argument("--max-dns-in-flight", type=int, default=150)
    run.add_argument("--log-level", default="info")
    add_ops_arguments(run)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="tunneler", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tunneler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    enroll = _add(sub, "enroll", "tunneler.enroll:cmd_enroll",
                  "enroll with a one-time JWT and write an OpenZiti identity file (mode 0600)")
    enroll.add_argument("--jwt", required=True, help="enrollment token file")
    enroll.add_argument("--identity", required=True, help="identity JSON file to write")

    _network_commands(sub)

    host = _add(sub, "run-host", "tunneler.host:cmd_run_host",
                "host mode: bind services (host.v1) and connect each flow to its endpoint")
    host.add_argument("--identity", action="append", default=[], help="identity JSON (repeatable)")
    host.add_argument("--identity-dir", help="load every *.json identity in this directory")
    _add_refresh_interval(host)
    host.add_argument("--log-level", default="info")
    add_ops_arguments(host)

    proxy = _add(sub, "proxy", "tunneler.proxy:cmd_proxy",
                 "proxy mode: listen locally and dial SERVICE for every accepted connection")
    proxy.add_argument("--identity", required=True)
    proxy.add_argument("bindings", nargs="+", metavar="SERVICE=[HOST:]PORT")
    _add_refresh_interval(proxy)
    proxy.add_argument("--log-level", default="info")

    _run_command(sub)

    stub = _add(sub, "llm-stub", "tunneler.llmstub.server:cmd_llm_stub",
                "serve a small OpenAI-compatible chat endpoint (demos and tests)")
    stub.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    stub.add_argument("--port", type=int, default=8000)
    stub.add_argument("--token-delay", type=float, default=0.05,
                      help="seconds between streamed tokens (default 0.05)")
    stub.add_argument("--max-streams", type=int, default=256,
                      help="concurrent streams before answering 429 (default 256)")
    stub.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    stub.add_argument("--tls-key", help="PEM private key (mode 0600) for --tls-cert")
    stub.add_argument("--log-level", default="info")

    cleanup = _add(sub, "cleanup", "tunneler.hostconfig.cleanup:cmd_cleanup",
                   "undo what a crashed daemon left: replay its journal, remove the TUN link "
                   "and our resolv.conf entry")
    cleanup.add_argument("--tun-name", default="tunneler0")
    cleanup.add_argument("--runtime-dir", default="/run/tunneler",
                         help="directory holding journal.json")
    cleanup.add_argument("--resolv-conf", default="/etc/resolv.conf")
    cleanup.add_argument("--log-level", default="info")

    _ops_commands(sub)

    version = _add(sub, "version", "tunneler.cli:cmd_version", "print the version")
    version.add_argument("--json", action="store_true")
    return parser


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f'{{"version": "{__version__}"}}' if args.json else f"tunneler {__version__}")
    return 0


def _resolve(target: str) -> Handler:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return cast(Handler, getattr(module, attr))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    log.configure(getattr(args, "log_level", "info"))
    handler = _resolve(args.handler)
    try:
        return handler(args)
    except TunnelerError as exc:
        print(f"tunneler: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
