"""The sidecar container layout without a container engine.

The "pod" is a network namespace: `docker/entrypoint.sh` starts the daemon in it with only
TUNNELER_ENROLL_TOKEN set (as `docker run -e` would), the daemon enrolls the token and writes
the namespace's resolv.conf in place (our DNS first, the original resolver kept below it),
and an unmodified app process joining the same namespace (`ip netns exec`, the analogue of
`network_mode: service:tunneler`) reaches the private endpoint by name. The network,
run-host and the endpoint live in a second namespace reached over a veth pair.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.privileged.run_support import Deployment
from tests.support.netns import NetnsPool
from tunneler.demo.netns import veth

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
POD_RESOLV = "nameserver 198.18.0.2\n"
HOSTS = "127.0.0.1 localhost\n198.18.0.2 edge.test\n"


def test_sidecar_entrypoint_and_app_in_the_same_namespace(netns_pool: NetnsPool,
                                                          tmp_path: Path) -> None:
    pod = netns_pool.new(resolv_conf=POD_RESOLV, hosts=HOSTS)
    edge = netns_pool.new(hosts=HOSTS)
    veth(pod, edge, "198.18.0.1/24", "198.18.0.2/24")
    deploy = Deployment(tmp_path)
    identity_dir, runtime_dir = tmp_path / "identity", tmp_path / "run"
    try:
        deploy.llm_behind_host(edge, "edge.test", "0.0.0.0")

        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "TUNNELER_ENROLL_TOKEN": (tmp_path / "client1.jwt").read_text(),
               "TUNNELER_IDENTITY_DIR": str(identity_dir),
               "TUNNELER_RUNTIME_DIR": str(runtime_dir)}
        with (tmp_path / "client.log").open("wb") as log:
            deploy.procs["client"] = pod.popen(["sh", str(ENTRYPOINT)], stdout=log,
                                               stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        deploy.wait_log("client", "daemon.ready", timeout=60)

        assert sorted(p.name for p in identity_dir.iterdir()) == [
            "sidecar.json", "sidecar.json.cache"]   # the identity and its service cache
        for name in ("sidecar.json", "sidecar.json.cache"):
            assert (identity_dir / name).stat().st_mode & 0o777 == 0o600
        resolv = pod.etc_file("resolv.conf").read_text().splitlines()
        assert resolv[0].startswith("# tunneler") and resolv[1] == "nameserver 100.64.0.2"
        assert resolv[2:] == POD_RESOLV.splitlines()       # the original, kept as upstream

        app = pod.run(["curl", "-sS", "--max-time", "10",
                       "http://llm.private.test:8000/v1/models"], check=False)
        assert app.returncode == 0 and "tunneler-demo" in app.stdout, app.stderr
        tunneler = str(Path(sys.executable).with_name("tunneler"))    # the image's HEALTHCHECK
        health = pod.run(["sh", str(ENTRYPOINT), tunneler, "status", "--control-socket",
                          str(runtime_dir / "tunneler.sock")], check=False)
        assert health.returncode == 0, health.stdout + health.stderr

        assert deploy.stop("client", signal.SIGTERM) == 0
        assert pod.etc_file("resolv.conf").read_text() == POD_RESOLV
    finally:
        deploy.close()
