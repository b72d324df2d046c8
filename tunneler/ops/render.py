"""Pure renderers for `tunneler intercepts` and `tunneler status`: aligned text and stable JSON.

The table fits `width` columns (80 unless the terminal says otherwise): columns start at their
natural width and the ones furthest above their minimum are cut, with "…", until the row fits.
Colour is used only when the caller says the output is a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tunneler.counters import Counters
from tunneler.ops.snapshot import InterceptRow, Status, problems, to_json

ELLIPSIS = "…"
GAP = "  "
HEADERS = ("ADDRESS", "VIP", "SERVICE", "PORTS", "IDENTITY", "ROUTER", "FLOWS", "ERROR")
#: with two-space gaps these add up to 80: the address and a whole IPv4 VIP always show
MIN_WIDTHS = (14, 12, 7, 7, 8, 6, 5, 7)
_GREEN, _RED, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[0m"


def render_json(value: Any) -> str:
    """Stable JSON: declared field order, two-space indent, UTF-8 kept."""
    return json.dumps(to_json(value), indent=2, ensure_ascii=False)


def truncate(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in "…" when cut."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + ELLIPSIS if width > 0 else ""


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}ms" if value < 10 else f"{value:.0f}ms"


def intercept_cells(row: InterceptRow, *, latency: bool = True) -> tuple[str, ...]:
    """The table cells of one row, untruncated (router latency only if `latency`)."""
    count = max(len(row.vips), row.vip_count)
    vips = row.vips[0] + (f"+{count - 1}" if count > 1 else "") if row.vips else "-"
    ports = "/".join(row.protocols) + ":" + ",".join(row.ports) if row.ports else \
        "/".join(row.protocols) or "-"
    router = "-" if row.router is None else row.router.removeprefix("tls://")
    if latency and row.router_latency_ms is not None:
        router += f" {_ms(row.router_latency_ms)}"
    return (row.address, vips, row.service, ports, row.identity, router,
            str(row.active_flows), row.last_error or "-")


def fit_widths(natural: Sequence[int], minimum: Sequence[int], width: int) -> list[int]:
    """Column widths no wider than `natural`, summing (with gaps) to at most `width`."""
    widths = list(natural)
    budget = width - len(GAP) * (len(widths) - 1)
    while sum(widths) > budget:
        shrinkable = [i for i, w in enumerate(widths) if w > minimum[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: (widths[i] - minimum[i], i))
        widths[widest] -= 1
    return widths


def render_table(rows: Sequence[Sequence[str]], headers: Sequence[str],
                 minimum: Sequence[int], width: int) -> str:
    """Left-aligned columns fitted to `width`; trailing spaces stripped."""
    natural = _natural(rows, headers)
    minimum = [min(m, n) for m, n in zip(minimum, natural, strict=True)]
    widths = fit_widths(natural, minimum, width)
    lines = []
    for cells in (headers, *rows):
        padded = [truncate(c, w).ljust(w) for c, w in zip(cells, widths, strict=True)]
        lines.append(GAP.join(padded).rstrip())
    return "\n".join(lines)


def render_intercepts(rows: Sequence[InterceptRow], width: int = 80) -> str:
    """The human table of `tunneler intercepts`."""
    if not rows:
        return "no intercepts"
    cells = [intercept_cells(r) for r in rows]
    if _natural_width(cells, HEADERS) > width:     # the latency goes first (status shows it)
        cells = [intercept_cells(r, latency=False) for r in rows]
    return render_table(cells, HEADERS, MIN_WIDTHS, width)


def _natural_width(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> int:
    return sum(_natural(rows, headers)) + len(GAP) * (len(headers) - 1)


def _natural(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> list[int]:
    return [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(headers)]


# ---- status ----------------------------------------------------------------------------------


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h{minutes:02d}m{secs:02d}s" if hours or days else f"{minutes}m{secs:02d}s"
    return f"{days}d{text}" if days else text


def _by_key(counts: dict[str, int]) -> str:
    shown = {k: v for k, v in sorted(counts.items()) if v}
    return ", ".join(f"{k} {v}" for k, v in shown.items()) or "none"


def _counter_lines(counters: Counters) -> list[str]:
    flows = counters.flows
    lines = [
        f"flows       opened {flows.flows_opened}, active {flows.flows_active}",
        f"bytes       up {human_bytes(flows.bytes_up)}, down {human_bytes(flows.bytes_down)}",
        f"dns         {_by_key(counters.dns)}",
        f"dial fails  {_by_key(counters.dial_failures)}",
        f"drops       {_by_key(counters.packets_dropped)}",
    ]
    if counters.vip_pool is not None:
        lines.append(f"vip pool    {counters.vip_pool.used} of {counters.vip_pool.size} used")
    return lines


def _state_lines(status: Status) -> list[str]:
    lines = ["identities"]
    for ident in status.identities:
        state = "loaded" if ident.loaded else f"NOT LOADED ({ident.error or 'unknown'})"
        ctrl = "controller reachable" if ident.controller_reachable else \
            "controller UNREACHABLE" + (f" ({ident.error})" if ident.loaded and ident.error
                                        else "")
        expiry = f", session until {ident.api_session_expires_at}" \
            if ident.api_session_expires_at else ""
        cached = f" (from the cache saved {ident.services_cached_at})" \
            if ident.services_cached_at else ""
        lines.append(f"  {ident.name}: {state}, {ctrl}, {ident.services} services{cached}"
                     f"{expiry}")
        if ident.cert_expires_at:
            renewed = f", renewed {ident.cert_renewed_at}" if ident.cert_renewed_at else ""
            failing = f", RENEWAL FAILING ({ident.cert_renewal_error})" \
                if ident.cert_renewal_error else ""
            lines.append(f"    certificate until {ident.cert_expires_at}{renewed}{failing}")
    lines.append("edge routers")
    for router in status.routers or ():
        state = "connected" if router.connected else "not connected"
        latency = f", {_ms(router.latency_ms)}" if router.latency_ms is not None else ""
        where = f" {router.url}" if router.url and router.url != router.name else ""
        lines.append(f"  {router.name}{where} ({router.identity}): {state}{latency}")
    if status.tun is not None:
        tun = status.tun
        lines.append(f"tun         {tun.name} {'up' if tun.up else 'DOWN'}, {tun.routes} routes"
                     f"{'' if tun.routes_applied else ' NOT APPLIED'}")
    if status.dns is not None:
        dns = status.dns
        upstreams = ", ".join(dns.upstreams) or "none"
        lines.append(f"dns server  {dns.address} via {dns.method}"
                     f"{'' if dns.applied else ' NOT APPLIED'}; upstreams {upstreams}")
    return lines


def render_status(status: Status, *, color: bool = False) -> str:
    """The human form of `tunneler status`."""
    found = problems(status)
    verdict = "unhealthy" if found else "healthy"
    if color:
        verdict = f"{_RED if found else _GREEN}{verdict}{_RESET}"
    head = (f"tunneler {status.version} ({status.mode}), up "
            f"{human_duration(status.uptime_s)}: {verdict}")
    lines = [head, *_state_lines(status), *_counter_lines(status.counters)]
    lines.extend(f"problem: {p}" for p in found)
    return "\n".join(lines)


def status_json(status: Status) -> dict[str, Any]:
    """`tunneler status --json`: the snapshot plus `healthy` and `problems`."""
    found = problems(status)
    data: dict[str, Any] = to_json(status)
    return {"healthy": not found, "problems": found, **data}
