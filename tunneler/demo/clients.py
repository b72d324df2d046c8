"""Small programs the scenario runs inside its namespaces: ``python -m tunneler.demo.clients CMD``.

- ``upstream-dns``: the resolver the app namespace had before tunneler (edge, UDP 53). It
  knows one name, the edge router's (an A record), and answers NXDOMAIN to everything else.
- ``get URL``: print a body (the stub's ``/stats``).
- ``stream``: one streamed completion with the official client; JSON with the arrival time of
  each token (time to first token vs last).
- ``concurrent N``: N streamed completions at once (AsyncOpenAI, no retries); JSON summary.
- ``cancel K``: read K tokens of a stream, then close it (the server must notice).
- ``load``: completions/s and time to first token with a light HTTP client (aiohttp), so that
  a benchmark measures the path rather than the client library.

Each program prints one JSON line. `OPENAI_SNIPPET` is what the demo runs with ``python -c``:
the official client, pointed at the private endpoint, as a user would write it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from tunneler.demo.scenario import EDGE_APP_IP, EDGE_NAME, LLM_URL

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

MODEL = "tunneler-demo"
PROMPT = "Hello from an unmodified client in the app namespace"
OPENAI_SNIPPET = f"""\
from openai import OpenAI

# The base URL is the only setting: the private endpoint wants no API key, any string will do.
client = OpenAI(base_url="{LLM_URL}", api_key="none")
stream = client.chat.completions.create(
    model="{MODEL}", stream=True,
    messages=[{{"role": "user", "content": "{PROMPT}"}}])
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
"""
MAX_DNS_QUERY = 4096


def upstream_dns(bind: str, port: int) -> None:
    """Answer A queries for the edge router's name, NXDOMAIN to all else, forever (killed with
    the namespace)."""
    from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(MAX_DNS_QUERY)
        try:
            query = DNSRecord.parse(data)
        except DNSError:  # garbage on the wire (dnslib wraps every parse error): ignore it
            continue
        reply = query.reply()
        if str(query.q.qname).rstrip(".").lower() != EDGE_NAME:
            reply.header.rcode = RCODE.NXDOMAIN
        elif query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(EDGE_APP_IP), ttl=60))
        sock.sendto(reply.pack(), peer)


def _messages(text: str = PROMPT) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def stream_times(base_url: str, max_tokens: int) -> dict[str, Any]:
    """One streamed completion; seconds from the request to each content token."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=30)
    start = time.monotonic()
    times, text = [], []
    stream = client.chat.completions.create(model=MODEL, stream=True, max_tokens=max_tokens,
                                            messages=_messages())
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic() - start)
            text.append(chunk.choices[0].delta.content)
    return {"times": times, "text": "".join(text)}


async def _concurrent(base_url: str, count: int, max_tokens: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)

    async def one(n: int) -> tuple[str, float]:
        start = time.monotonic()
        stream = await client.chat.completions.create(
            model=MODEL, stream=True, max_tokens=max_tokens,
            messages=_messages(f"request {n}"))
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return "".join(parts), time.monotonic() - start

    start = time.monotonic()
    results = await asyncio.gather(*(one(n) for n in range(count)), return_exceptions=True)
    elapsed = time.monotonic() - start
    await client.close()
    texts = [r[0] for r in results if isinstance(r, tuple)]
    errors = [repr(r) for r in results if not isinstance(r, tuple)]
    return {"ok": len(texts), "errors": errors, "elapsed": elapsed,
            "longest": max((r[1] for r in results if isinstance(r, tuple)), default=0.0),
            "distinct_ok": sum(f"request {n}" in t for n, t in enumerate(texts))}


def cancel_after(base_url: str, tokens: int) -> dict[str, Any]:
    """Read `tokens` content chunks of a long stream, then close the connection."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=30)
    stream = client.chat.completions.create(model=MODEL, stream=True, max_tokens=1000,
                                            messages=_messages())
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received >= tokens:
                break
    stream.close()
    client.close()
    return {"received": received}


async def load(base_url: str, seconds: float, concurrency: int,
               samples: int) -> dict[str, float]:
    """Non-streamed completions/s over `concurrency` kept-alive connections, then the time to
    first token of streamed completions, on one kept-alive connection and on new ones."""
    import aiohttp

    url = f"{base_url}/chat/completions"
    body = {"model": MODEL, "messages": _messages(), "max_tokens": 8}
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, json=body) as response:
                    await response.read()
                    response.raise_for_status()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = done / (time.perf_counter() - start)
        kept = sorted([await _ttft(session, url, {}) for _ in range(samples)])
        fresh = sorted([await _ttft(session, url, {"Connection": "close"})
                        for _ in range(samples)])
    return {"completions_per_s": rate,
            "ttft_keepalive_p50_ms": kept[len(kept) // 2] * 1e3,
            "ttft_keepalive_p90_ms": kept[int(len(kept) * 0.9)] * 1e3,
            "ttft_new_conn_p50_ms": fresh[len(fresh) // 2] * 1e3,
            "ttft_new_conn_p90_ms": fresh[int(len(fresh) * 0.9)] * 1e3}


async def _ttft(session: Any, url: str, headers: dict[str, str]) -> float:
    """Seconds from sending a streamed request to its first content token."""
    body = {"model": MODEL, "messages": _messages(), "max_tokens": 4, "stream": True}
    start = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as response:
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content":"' in line \
                    and b'"content":""' not in line:
                first = time.perf_counter() - start
                await response.read()
                return first
    raise RuntimeError("the stream ended without a token")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tunneler.demo.clients",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=LLM_URL)
    sub = parser.add_subparsers(dest="command", required=True)
    dns = sub.add_parser("upstream-dns")
    dns.add_argument("--bind", default="0.0.0.0")
    dns.add_argument("--port", type=int, default=53)
    sub.add_parser("get").add_argument("url")
    sub.add_parser("stream").add_argument("--max-tokens", type=int, default=40)
    concurrent = sub.add_parser("concurrent")
    concurrent.add_argument("count", type=int)
    concurrent.add_argument("--max-tokens", type=int, default=20)
    sub.add_parser("cancel").add_argument("tokens", type=int)
    bench = sub.add_parser("load")
    bench.add_argument("--seconds", type=float, default=5.0)
    bench.add_argument("--concurrency", type=int, default=16)
    bench.add_argument("--samples", type=int, default=50)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result: Any = None
    if args.command == "upstream-dns":
        upstream_dns(args.bind, args.port)
    elif args.command == "get":
        with urllib.request.urlopen(args.url, timeout=10) as response:
            print(response.read().decode())
    elif args.command == "stream":
        result = stream_times(args.base_url, args.max_tokens)
    elif args.command == "concurrent":
        result = asyncio.run(_concurrent(args.base_url, args.count, args.max_tokens))
    elif args.command == "cancel":
        result = cancel_after(args.base_url, args.tokens)
    elif args.command == "load":
        result = asyncio.run(load(args.base_url, args.seconds, args.concurrency, args.samples))
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
