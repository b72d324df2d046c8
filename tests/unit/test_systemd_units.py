"""systemd units: `systemd-analyze verify` clean, hardening and capabilities as documented.

`verify` checks that ExecStart binaries exist, so it runs on a copy whose only change is the
path of the tunneler executable (/usr/local/bin/tunneler → this venv's); every other line is
the shipped text.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED = "/usr/local/bin/tunneler"
UNITS = ("tunneler.service", "tunneler-host.service")
ANALYZE = shutil.which("systemd-analyze")


def directives(unit: str) -> dict[str, list[str]]:
    """KEY -> values of the [Service] section (comments and other sections ignored)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in (SYSTEMD / unit).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED in text
    tunneler = Path(sys.executable).with_name("tunneler")
    assert tunneler.exists()
    (tmp_path / unit).write_text(text.replace(INSTALLED, str(tunneler)))
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "verify", "--man=no", str(tmp_path / unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


COMMON = {
    "Type": ["notify"], "NotifyAccess": ["main"], "WatchdogSec": ["30"],
    "Restart": ["on-failure"], "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"],
    "ProtectHome": ["yes"], "PrivateTmp": ["yes"], "User": ["tunneler"], "LimitCORE": ["0"],
}


@pytest.mark.parametrize("unit", UNITS)
def test_hardening(unit: str) -> None:
    found = directives(unit)
    for key, value in COMMON.items():
        assert found.get(key) == value, key
    assert found["StateDirectory"] and found["RuntimeDirectory"]
    assert found["EnvironmentFile"] == ["-/etc/tunneler/tunneler.env"]
    assert "--identity-dir" in found["ExecStart"][0]
    assert "--control-socket /run/" in found["ExecStart"][0]


def test_intercept_unit_has_only_net_admin() -> None:
    found = directives("tunneler.service")
    assert found["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert found["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert found["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert found["DeviceAllow"] == ["/dev/net/tun rw"]
    assert found["ExecStopPost"][0].startswith(f"{INSTALLED} cleanup ")
    assert found["ExecStart"][0].startswith(f"{INSTALLED} run ")


def test_host_unit_has_no_capabilities() -> None:
    found = directives("tunneler-host.service")
    assert found["AmbientCapabilities"] == [""]
    assert found["CapabilityBoundingSet"] == [""]
    assert found["PrivateDevices"] == ["yes"]
    assert "AF_NETLINK" not in found["RestrictAddressFamilies"][0]
    assert found["ExecStart"][0].startswith(f"{INSTALLED} run-host ")


def test_env_sample_is_all_comments_or_assignments() -> None:
    for line in (SYSTEMD / "tunneler.env").read_text().splitlines():
        assert not line or line.startswith("#") or "=" in line
