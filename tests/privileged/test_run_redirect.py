"""`tunneler run --tcp-redirect`: real nftables DNAT of local TCP to the engine's listener.

One namespace with the network, run-host and the LLM stub. The table's rule carries a counter
(nat chains see the first packet of each connection), so the test knows the request went
through the kernel redirect and not the TUN hairpin. A port no service intercepts is reset
after the handshake (the mode's trade-off); SIGTERM removes the table, and after a SIGKILL
`tunneler cleanup` replays the journal and removes it.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.privileged.run_support import Deployment
from tests.support.netns import NetnsPool
from tunneler.demo.netns import Netns

RESOLV = "nameserver 127.0.0.1\n"
URL = "http://llm.private.test:8000/v1/models"
TABLE = ["nft", "list", "table", "ip", "tunneler_tunneler0"]


def _redirected(ns: Netns) -> int:
    """Connections the table has sent to the listener so far."""
    found = re.search(r"counter packets (\d+)", ns.run(TABLE).stdout)
    assert found is not None
    return int(found.group(1))


def test_local_tcp_goes_through_the_kernel_redirect_and_the_table_is_removed(
        netns_pool: NetnsPool, tmp_path: Path) -> None:
    ns = netns_pool.new(resolv_conf=RESOLV)
    deploy = Deployment(tmp_path)
    try:
        deploy.llm_behind_host(ns)
        identity = deploy.enroll(ns, "client1")
        deploy.run_client(ns, identity, "--tcp-redirect")
        table = ns.run(TABLE).stdout
        assert "100.64.0.0/10" in table and "dnat to 100.64.0.1:" in table
        assert _redirected(ns) == 0
        for _ in range(3):
            result = ns.run(["curl", "-sS", "--max-time", "10", URL])
            assert '"object"' in result.stdout
        assert _redirected(ns) == 3
        refused = ns.run(["curl", "-sS", "--max-time", "10", "http://llm.private.test:8001/"],
                         check=False)
        assert refused.returncode == 56 and "reset" in refused.stderr  # after the handshake
        assert _redirected(ns) == 4
        assert deploy.stop("client", signal.SIGTERM) == 0
        assert ns.run(TABLE, check=False).returncode != 0

        deploy.run_client(ns, identity, "--tcp-redirect")
        assert ns.run(TABLE, check=False).returncode == 0
        deploy.stop("client", signal.SIGKILL)
        assert ns.run(TABLE, check=False).returncode == 0  # a crash leaves it behind
        deploy.tunneler(ns, "cleanup", "--runtime-dir", str(tmp_path / "run"))
        assert ns.run(TABLE, check=False).returncode != 0
    finally:
        deploy.close()
