"""`tunneler run` in one namespace with the network, run-host and an HTTP server on loopback."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.privileged.run_support import Deployment, links
from tests.support.netns import NetnsPool
from tests.support.wait import eventually

RESOLV = b"nameserver 127.0.0.1\n"


def test_curl_by_name_through_our_dns_and_clean_exit(netns_pool: NetnsPool,
                                                     tmp_path: Path) -> None:
    ns = netns_pool.new(resolv_conf=RESOLV.decode())
    deploy = Deployment(tmp_path)
    try:
        deploy.llm_behind_host(ns)
        deploy.run_client(ns, deploy.enroll(ns, "client1"))
        assert ns.etc_file("resolv.conf").read_bytes().splitlines()[1] == b"nameserver 100.64.0.2"
        result = ns.run(["curl", "-sS", "--max-time", "10", "http://llm.private.test:8000/v1/models"])
        assert '"object"' in result.stdout and "list" in result.stdout
        assert deploy.stop("client", signal.SIGTERM) == 0
        assert "tunneler0" not in links(ns)
        assert ns.etc_file("resolv.conf").read_bytes() == RESOLV
    finally:
        deploy.close()


def test_routes_and_resolver_lines_removed_by_others_are_put_back(netns_pool: NetnsPool,
                                                                   tmp_path: Path) -> None:
    ns = netns_pool.new(resolv_conf=RESOLV.decode())
    deploy = Deployment(tmp_path)
    url = "http://llm.private.test:8000/v1/models"
    try:
        deploy.llm_behind_host(ns)
        deploy.run_client(ns, deploy.enroll(ns, "client1"))
        ns.ip("addr", "flush", "dev", "tunneler0")  # another tool takes our address away
        rewritten = b"# written by a DHCP client\nnameserver 127.0.0.1\n"
        ns.etc_file("resolv.conf").write_bytes(rewritten)
        eventually(lambda: any(a.get("addr_info") for a in ns.ip_json("addr", "show", "tunneler0")))
        eventually(lambda: ns.etc_file("resolv.conf").read_bytes().endswith(rewritten)
                   and b"nameserver 100.64.0.2" in ns.etc_file("resolv.conf").read_bytes())
        result = ns.run(["curl", "-sS", "--max-time", "10", url])
        assert '"object"' in result.stdout
        assert "daemon.routes_restored" in deploy.log("client")
        assert "dns.resolv_conf_reclaimed" in deploy.log("client")
        assert deploy.stop("client", signal.SIGTERM) == 0
        assert ns.etc_file("resolv.conf").read_bytes() == rewritten  # the newer original
    finally:
        deploy.close()
