"""tunneler.tun.netlink: IPRoute without pyroute2's eager package imports, the package whole."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, sys
from tunneler.tun import routes
loaded = sorted(m for m in sys.modules if m.startswith("pyroute2"))
from pyroute2 import NDB, IPRoute  # another user of the package, after us
import pyroute2.ndb.main
print(json.dumps({"loaded": loaded, "same": IPRoute is routes.IPRoute,
                  "ndb": NDB is pyroute2.ndb.main.NDB,
                  "after": sum(m.startswith("pyroute2") for m in sys.modules)}))
"""


def test_routes_load_only_iproute_and_the_package_stays_whole_for_others() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            check=True, timeout=60)
    found = json.loads(result.stdout)
    loaded = set(found["loaded"])
    assert "pyroute2.iproute.linux" in loaded
    assert not {"pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.ethtool"} & loaded
    assert len(loaded) < 110  # 99 with pyroute2 0.9.7; the whole package is 163
    assert found["same"] and found["ndb"] and found["after"] > len(loaded)
