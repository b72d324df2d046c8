"""`tunneler run` in one namespace with the network, run-host and an HTTP server on loopback."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.privileged.run_support import Deployment, links
from tests.support.netns import NetnsPool

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
