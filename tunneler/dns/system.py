"""Point the OS resolver at our DNS server, and undo it (reliability.md §3.4, anchors.md §7).

Methods, chosen by `detect_method`:

- ``RESOLVED`` — systemd-resolved runs and the system resolves through it: per-link DNS on
  the TUN with routing domains limited to the intercepted names (``~llm.private.test``; ``~.``
  only when asked), ``default-route no``, LLMNR and mDNS off, via ``resolvectl`` argv lists. Undo:
  ``resolvectl revert LINK``; the settings also vanish with the link.
- ``FILE`` — rewrite resolv.conf: an ownership marker line, ``nameserver DNS_IP``, then the
  original file byte for byte (its nameservers stay as fallbacks after ours). The file thus
  carries its own backup: restoring removes the two first lines, only if the marker is still
  there (someone else rewrote the file otherwise, and we leave it alone), and keeps edits
  made below them. Written in place (write + truncate, never rename) because resolv.conf may
  be a bind mount (containers, ``ip netns exec``).
- ``NONE`` — ``--no-dns-config``: the system is left alone.

Pure functions (parsing, rendering, upstream choice, resolvectl argv) are separate from the
file and process I/O below them.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tunneler.errors import DnsSetupError
from tunneler.journal import Journal, Step
from tunneler.log import get_logger

log = get_logger("dns")

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_DIR = Path("/run/systemd/resolve")
RESOLVED_VARLINK = RESOLVED_DIR / "io.systemd.Resolve"
RESOLVED_UPSTREAM = RESOLVED_DIR / "resolv.conf"
STUB_ADDRESSES = frozenset({"127.0.0.53", "127.0.0.54"})
MARKER = (b"# tunneler: the next line is ours and is removed on exit; "
          b"the rest of this file is the original\n")
MAX_RESOLV_CONF = 64 * 1024
RESOLVECTL_TIMEOUT = 10.0
#: the service manager's variables are for our main process only: systemd's own tools report
#: their failures there too (`ERRNO=`), which systemd then logs as a stray notification
POLKIT_HINT = ("; systemd-resolved takes link settings from a non-root daemon only through "
               "polkit: install polkitd and dns/polkit/50-tunneler-resolve1.rules as "
               "/etc/polkit-1/rules.d/50-tunneler-resolve1.rules, or run with --no-dns-config")
SERVICE_MANAGER_VARIABLES = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


class Method(enum.Enum):
    RESOLVED = "systemd-resolved"
    FILE = "resolv.conf"
    NONE = "none"


# ---- pure -----------------------------------------------------------------------------------


def parse_nameservers(text: str) -> list[str]:
    """The valid ``nameserver`` addresses of a resolv.conf, in order (zone ids kept)."""
    servers = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ipaddress.ip_address(words[1].split("%", 1)[0])
            except ValueError:
                continue
            servers.append(words[1])
    return servers


def strip_ours(current: bytes) -> bytes | None:
    """The original file hidden under our header; None when the file is not ours."""
    if not current.startswith(MARKER):
        return None
    rest = current[len(MARKER):]
    first, newline, original = rest.partition(b"\n")
    if not newline or not first.startswith(b"nameserver "):
        return None
    return original


def render_resolv_conf(original: bytes, dns_ip: str) -> bytes:
    """Our header (marker + nameserver) over the original file, which stays byte-identical."""
    ipaddress.ip_address(dns_ip)
    base = strip_ours(original)
    return MARKER + f"nameserver {dns_ip}\n".encode() + (original if base is None else base)


def choose_upstreams(resolv_conf: str, dns_ip: str, resolved_upstream: str | None) -> list[str]:
    """The nameservers the system used before us: never ourselves; the resolved stub is
    replaced by resolved's own upstream list when it is known."""
    chosen: list[str] = []
    for server in parse_nameservers(resolv_conf):
        if server in STUB_ADDRESSES:
            extra = parse_nameservers(resolved_upstream) if resolved_upstream else []
            chosen.extend(s for s in extra if s not in STUB_ADDRESSES)
        else:
            chosen.append(server)
    return list(dict.fromkeys(s for s in chosen if s != dns_ip))


def routing_domains(domains: Iterable[str], route_all: bool = False) -> list[str]:
    """Routing domains for intercepted names: ``*.a.test`` and ``a.test`` -> ``~a.test``."""
    if route_all:
        return ["~."]
    result: dict[str, None] = {}
    for name in domains:
        bare = name.strip().rstrip(".").removeprefix("*.").lstrip(".").lower()
        if not bare or "*" in bare or any(c.isspace() for c in bare):
            raise DnsSetupError(f"cannot turn {name!r} into a DNS routing domain")
        result[f"~{bare}"] = None
    return list(result)


def resolvectl_commands(link: str, dns_ip: str, domains: Iterable[str],
                        route_all: bool = False) -> list[list[str]]:
    """The resolvectl argv lists that give ``link`` our server for ``domains``."""
    ipaddress.ip_address(dns_ip)
    routed = routing_domains(domains, route_all)
    return [
        ["resolvectl", "dns", link, dns_ip],
        ["resolvectl", "domain", link, *routed],
        ["resolvectl", "default-route", link, "yes" if route_all else "no"],
    ]


def quiet_link_commands(link: str) -> list[list[str]]:
    """No multicast name lookups (LLMNR, mDNS) on the TUN: only unicast DNS to us. Best
    effort: a polkit rule from before they were allowed must not stop the daemon."""
    return [["resolvectl", "llmnr", link, "no"], ["resolvectl", "mdns", link, "no"]]


# ---- I/O ------------------------------------------------------------------------------------


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_RESOLV_CONF + 1)
    if len(data) > MAX_RESOLV_CONF:
        raise DnsSetupError(f"{path} is larger than {MAX_RESOLV_CONF} bytes; refusing to edit it")
    return data


def _read_text(path: Path) -> str | None:
    try:
        return _read_capped(path).decode("utf-8", "replace")
    except OSError:
        return None


def write_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` through its existing inode (bind mounts cannot be renamed over)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "r+b") as handle:
        handle.write(data)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())


def read_upstreams(resolv_conf: Path = RESOLV_CONF, dns_ip: str = "",
                   resolved_upstream: Path = RESOLVED_UPSTREAM) -> list[str]:
    """Default DNS upstreams: what the system used before us (see `choose_upstreams`)."""
    return choose_upstreams(_read_text(resolv_conf) or "", dns_ip, _read_text(resolved_upstream))


def _uses_resolved(resolv_conf: Path) -> bool:
    target = resolv_conf.resolve()
    if target.is_relative_to(RESOLVED_DIR):
        return True
    return any(s in STUB_ADDRESSES for s in parse_nameservers(_read_text(resolv_conf) or ""))


def detect_method(resolv_conf: Path = RESOLV_CONF, *, no_dns_config: bool = False
                  ) -> tuple[Method, str]:
    """Which method applies here, and why (for logs and error messages)."""
    if no_dns_config:
        return Method.NONE, "--no-dns-config given"
    if not RESOLVED_VARLINK.exists():
        return Method.FILE, f"systemd-resolved is not running ({RESOLVED_VARLINK} missing)"
    if shutil.which("resolvectl") is None:
        return Method.FILE, "systemd-resolved runs but resolvectl is not installed"
    if not _uses_resolved(resolv_conf):
        return Method.FILE, f"systemd-resolved runs but {resolv_conf} does not point at it"
    return Method.RESOLVED, "systemd-resolved runs and the system resolves through it"


def child_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Our environment without the service manager's variables (see above)."""
    return {k: v for k, v in environ.items() if k not in SERVICE_MANAGER_VARIABLES}


def _resolvectl(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              timeout=RESOLVECTL_TIMEOUT, env=child_environment())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DnsSetupError(f"{' '.join(argv)} failed: {exc}") from exc


def apply_resolved(link: str, dns_ip: str, domains: Iterable[str], route_all: bool = False) -> None:
    for argv in resolvectl_commands(link, dns_ip, domains, route_all):
        result = _resolvectl(argv)
        if result.returncode != 0:
            raise DnsSetupError(f"{' '.join(argv)} failed: {result.stderr.strip()}"
                                + (POLKIT_HINT if _refused(result.stderr) else ""))
    for argv in quiet_link_commands(link):
        result = _resolvectl(argv)
        if result.returncode != 0:
            log.warning("dns.resolved_link_option_refused", command=" ".join(argv[1:3]),
                        error=result.stderr.strip(), hint=POLKIT_HINT.removeprefix("; "))


def _refused(stderr: str) -> bool:
    """resolvectl's words for polkit saying no (no rule; a rule without that action)."""
    return any(words in stderr.lower() for words in ("denied", "authentication required"))


def revert_resolved_link(link: str) -> bool:
    """``resolvectl revert LINK``; False when resolvectl or the link is gone."""
    if shutil.which("resolvectl") is None:
        return False
    ok = _resolvectl(["resolvectl", "revert", link]).returncode == 0
    log.info("dns.resolved_link_reverted", link=link, ok=ok)
    return ok


def install_resolv_conf(path: Path, dns_ip: str) -> None:
    """Put our nameserver first in ``path`` (see the module docstring)."""
    try:
        original = _read_capped(path)
    except FileNotFoundError:
        original = b""
    except OSError as exc:
        raise DnsSetupError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        write_in_place(path, render_resolv_conf(original, dns_ip))
    except OSError as exc:
        raise DnsSetupError(f"cannot write {path}: {exc.strerror}") from exc
    log.info("dns.resolv_conf_installed", path=str(path), dns_ip=dns_ip)


def restore_resolv_conf(path: Path) -> bool:
    """Remove our header if the file is still ours; False when it is not (left alone)."""
    try:
        original = strip_ours(_read_capped(path))
    except FileNotFoundError:
        original = None
    except OSError as exc:
        raise DnsSetupError(f"cannot read {path}: {exc.strerror}") from exc
    if original is None:
        log.info("dns.resolv_conf_not_owned", path=str(path))
        return False
    try:
        write_in_place(path, original)
    except OSError as exc:
        raise DnsSetupError(f"cannot restore {path}: {exc.strerror}") from exc
    log.info("dns.resolv_conf_restored", path=str(path))
    return True


class SystemResolver:
    """Configure the OS resolver for one TUN link and undo it; every change is journaled first."""

    def __init__(self, method: Method, *, link: str, dns_ip: str, domains: Iterable[str] = (),
                 resolv_conf: Path = RESOLV_CONF, route_all: bool = False,
                 journal: Journal | None = None) -> None:
        self.method = method
        self.link = link
        self.dns_ip = dns_ip
        self.domains = list(domains)
        self.resolv_conf = resolv_conf
        self.route_all = route_all
        self._journal = journal

    def _record(self, step: Step) -> None:
        if self._journal is not None:
            self._journal.record(step)

    def apply(self) -> None:
        if self.method is Method.RESOLVED:
            self._record(Step.revert_resolved_link(self.link))
            apply_resolved(self.link, self.dns_ip, self.domains, self.route_all)
            log.info("dns.resolved_link_configured", link=self.link, domains=len(self.domains))
        elif self.method is Method.FILE:
            self._record(Step.restore_resolv_conf(self.resolv_conf))
            install_resolv_conf(self.resolv_conf, self.dns_ip)
        else:
            log.info("dns.system_config_skipped", reason="--no-dns-config")

    def set_domains(self, domains: Iterable[str], *, route_all: bool = False) -> None:
        """The intercepted names changed: route these to us (resolved; resolv.conf sends
        every name to us anyway)."""
        self.domains, self.route_all = list(domains), route_all
        if self.method is Method.RESOLVED:
            apply_resolved(self.link, self.dns_ip, self.domains, self.route_all)
            log.info("dns.resolved_domains_updated", link=self.link, domains=len(self.domains))

    def reclaim(self) -> bool:
        """Put our resolv.conf header back if something rewrote the file; True if it did.

        What the other writer left becomes the new original (restored on exit). Only the
        resolv.conf method is checked: resolved's per-link settings vanish only with the link.
        """
        if self.method is not Method.FILE:
            return False
        try:
            current = _read_capped(self.resolv_conf)
        except OSError:
            current = b""
        if strip_ours(current) is not None:
            return False
        install_resolv_conf(self.resolv_conf, self.dns_ip)
        log.warning("dns.resolv_conf_reclaimed", path=str(self.resolv_conf))
        return True

    def revert(self) -> None:
        if self.method is Method.RESOLVED:
            revert_resolved_link(self.link)
        elif self.method is Method.FILE:
            restore_resolv_conf(self.resolv_conf)
