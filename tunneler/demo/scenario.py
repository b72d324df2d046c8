"""The private-LLM topology, built the way a user would, shared by the demo, e2e test and bench.

::

    app 198.18.10.1 ── 198.18.10.2 edge 198.18.11.1 ── 198.18.11.2 llm
    tunneler run        network serve, upstream DNS     llm-stub :8000 (all addresses),
    (unmodified         (ip_forward=0: no path           tunneler run-host, nftables:
     clients)            from app to llm but ours)       every inbound connection dropped

Every tunneler program runs as ``python -m tunneler ...`` inside its namespace (argv lists),
logging to ``WORKDIR/<name>.log``. `Scenario.close()` stops them (SIGTERM, then SIGKILL),
deletes the namespaces, their /etc/netns files and the work directory, and is safe to call
at any point, also after a failed or interrupted start.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunneler.demo.netns import Netns, ours, veth
from tunneler.demo.processes import Processes

APP_IP, EDGE_APP_IP = "198.18.10.1", "198.18.10.2"
EDGE_LLM_IP, LLM_IP = "198.18.11.1", "198.18.11.2"
EDGE_NAME = "edge.tunneler.test"
LLM_NAME = "llm.private.test"
LLM_PORT = 8000
LLM_URL = f"http://{LLM_NAME}:{LLM_PORT}/v1"
DNS_IP = "100.64.0.2"
"""Our DNS inside the app namespace: the address after the TUN's (default range 100.64.0.1/10)."""
PYTHON = sys.executable
TUNNELER = [PYTHON, "-m", "tunneler"]
UPSTREAM_RESOLV = f"# the app namespace's resolver before tunneler\nnameserver {EDGE_APP_IP}\n"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Service:
    """An intercepted name:port that run-host connects to 127.0.0.1:port in the llm namespace."""

    name: str
    address: str
    port: int

    def entry(self) -> dict[str, object]:
        return {"name": self.name, "roleAttributes": ["private-llm"], "encryptionRequired": True,
                "configs": {
                    "intercept.v1": {"protocols": ["tcp"], "addresses": [self.address],
                                     "portRanges": [{"low": self.port, "high": self.port}]},
                    "host.v1": {"protocol": "tcp", "address": "127.0.0.1", "port": self.port}}}


LLM_SERVICE = Service("llm", LLM_NAME, LLM_PORT)


def policy_yaml(services: Sequence[Service]) -> str:
    """The file `network apply` loads: laptop may dial, llm-host binds the services."""
    return yaml.safe_dump({
        "identities": [{"name": "laptop", "roleAttributes": ["llm-clients"]},
                       {"name": "llm-host", "roleAttributes": ["llm-hosts"]}],
        "services": [service.entry() for service in services],
        "servicePolicies": [
            {"name": "llm-dial", "type": "Dial", "semantic": "AnyOf",
             "identityRoles": ["#llm-clients"], "serviceRoles": ["#private-llm"]},
            {"name": "llm-bind", "type": "Bind", "semantic": "AnyOf",
             "identityRoles": ["#llm-hosts"], "serviceRoles": ["#private-llm"]},
        ],
    }, sort_keys=False, default_flow_style=None, width=100)


def _hosts(edge_ip: str) -> str:
    return f"127.0.0.1 localhost\n::1 localhost\n{edge_ip} {EDGE_NAME}\n"


class Scenario(Processes):
    """The three namespaces and every process of the scenario (see the module docstring)."""

    def __init__(self, workdir: Path, *, token_delay: float = 0.02,
                 services: Sequence[Service] = (LLM_SERVICE,), echo: Echo | None = None) -> None:
        super().__init__(workdir)
        self.net = workdir / "net"
        self.runtime = workdir / "run"
        self.token_delay = token_delay
        self.services = tuple(services)
        self.echo = echo or (lambda _line: None)
        self.spaces: dict[str, Netns] = {}
        self.veths: dict[str, tuple[str, str]] = {}

    # -- namespaces ------------------------------------------------------------------------------
    @property
    def app(self) -> Netns:
        return self.spaces["app"]

    @property
    def edge(self) -> Netns:
        return self.spaces["edge"]

    @property
    def llm(self) -> Netns:
        return self.spaces["llm"]

    def _netns(self, role: str, edge_ip: str) -> Netns:
        self.spaces[role] = Netns(role, resolv_conf=f"nameserver {edge_ip}\n"
                                  if role != "app" else UPSTREAM_RESOLV, hosts=_hosts(edge_ip))
        return self.spaces[role]

    def build_topology(self) -> None:
        """Namespaces, veth pairs, no forwarding in edge, inbound drop in llm, upstream DNS."""
        self.dir.mkdir(parents=True, exist_ok=True)
        app, edge = self._netns("app", EDGE_APP_IP), self._netns("edge", EDGE_APP_IP)
        llm = self._netns("llm", EDGE_LLM_IP)
        self.veths["app-edge"] = veth(app, edge, f"{APP_IP}/24", f"{EDGE_APP_IP}/24")
        self.veths["edge-llm"] = veth(edge, llm, f"{EDGE_LLM_IP}/24", f"{LLM_IP}/24")
        edge.sysctl("net.ipv4.ip_forward", "0")
        llm.drop_inbound()
        self.start(edge, "upstream-dns", [PYTHON, "-m", "tunneler.demo.clients", "upstream-dns"])
        self.wait_log("upstream-dns", "ready")

    # -- processes -------------------------------------------------------------------------------
    def tunneler(self, ns: Netns, *args: str, timeout: float = 60) -> str:
        """Run one short tunneler command in `ns`; its stdout (NetnsError when it fails)."""
        self.echo(f"[{ns.role}] $ tunneler {' '.join(args)}")
        return ns.run([*TUNNELER, *args], timeout=timeout).stdout

    def start(self, ns: Netns, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a long-running program in `ns`, logging to WORKDIR/<name>.log."""
        shown = " ".join(["tunneler", *argv[3:]] if list(argv[:3]) == TUNNELER
                         else ["python", *argv[1:]] if argv[0] == PYTHON else argv)
        self.echo(f"[{ns.role}] $ {shown} &")
        return super().start(ns, name, argv)

    # -- the overlay -----------------------------------------------------------------------------
    def start_network(self) -> str:
        """`network init/apply/serve` and one-time tokens in edge; returns the policy YAML."""
        policy = policy_yaml(self.services)
        (self.dir / "policy.yaml").write_text(policy)
        self.tunneler(self.edge, "network", "init", str(self.net), "--hostname", EDGE_NAME)
        self.tunneler(self.edge, "network", "apply", str(self.net), str(self.dir / "policy.yaml"))
        self.start(self.edge, "network", [*TUNNELER, "network", "serve", str(self.net)])
        for identity in ("laptop", "llm-host"):
            self.tunneler(self.edge, "network", "enroll-token", str(self.net), identity,
                          "-o", str(self.dir / f"{identity}.jwt"))
        self.wait_log("network", "network.serving")
        return policy

    def enroll(self, ns: Netns, identity: str) -> Path:
        """`tunneler enroll` inside `ns`; the identity file (0600)."""
        target = self.dir / f"{identity}.json"
        self.tunneler(ns, "enroll", "--jwt", str(self.dir / f"{identity}.jwt"),
                      "--identity", str(target))
        return target

    def start_llm(self) -> None:
        """The LLM endpoint (listening on every address: only nftables keeps others out)."""
        self.start(self.llm, "llm-stub", [*TUNNELER, "llm-stub", "--listen", "0.0.0.0",
                                          "--port", str(LLM_PORT),
                                          "--token-delay", str(self.token_delay)])
        self.wait_log("llm-stub", "llmstub.started")

    def start_host(self) -> None:
        identity = self.enroll(self.llm, "llm-host")
        self.start(self.llm, "run-host", [*TUNNELER, "run-host", "--identity", str(identity)])
        self.wait_log("run-host", "host.service_bound", count=len(self.services))

    def start_app(self) -> None:
        """`tunneler run` in app: TUN, routes, DNS, and the namespace's resolv.conf."""
        identity = self.enroll(self.app, "laptop")
        self.start(self.app, "run", [*TUNNELER, "run", "--identity", str(identity),
                                     "--runtime-dir", str(self.runtime)])
        self.wait_log("run", "daemon.ready")

    def up(self) -> None:
        """Everything, in the demo's order."""
        self.build_topology()
        self.start_network()
        self.start_llm()
        self.start_host()
        self.start_app()

    # -- inside the namespaces -------------------------------------------------------------------
    @property
    def control_socket(self) -> Path:
        return self.runtime / "tunneler.sock"

    def client(self, *args: str, ns: Netns | None = None, timeout: float = 60) -> str:
        """`python -m tunneler.demo.clients ARGS` in `ns` (default app); its stdout."""
        return (ns or self.app).run([PYTHON, "-m", "tunneler.demo.clients", *args],
                                    timeout=timeout).stdout

    def stub_stats(self) -> dict[str, int]:
        """The LLM stub's counters, read from inside llm over loopback."""
        out = self.client("get", f"http://127.0.0.1:{LLM_PORT}/stats", ns=self.llm)
        return {str(k): int(v) for k, v in json.loads(out).items()}

    # -- teardown --------------------------------------------------------------------------------
    def stop_all(self) -> dict[str, int]:
        """Stop `run` first (it restores the resolver), the network last; the exit codes."""
        order: list[str] = [n for n in ("run", "run-host") if n in self.procs]
        order += [n for n in self.procs if n not in (*order, "network")]
        order += ["network"] if "network" in self.procs else []
        return {name: self.stop(name) for name in order}

    def close(self) -> dict[str, int]:
        """Stop everything, delete namespaces and the work directory; the exit codes."""
        codes: dict[str, int] = {}
        try:
            codes = self.stop_all()
        finally:
            for ns in reversed(list(self.spaces.values())):
                ns.delete()
            self.spaces.clear()
            shutil.rmtree(self.dir, ignore_errors=True)
        return codes

    def leftovers(self) -> list[str]:
        """What this run left on the machine (empty after `close`)."""
        found = ours()
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                               check=False).stdout
        found += [f"link {pair[0]}" for pair in self.veths.values() if pair[0] in links]
        if self.dir.exists():
            found.append(str(self.dir))
        return found


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt once, so `finally` cleanup runs on
    them too; later signals are ignored so that they cannot cut the cleanup short."""
    raised = False

    def handler(signum: int, _frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise KeyboardInterrupt(f"signal {signum}")

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
