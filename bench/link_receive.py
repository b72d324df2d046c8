"""Link receive micro-benchmark: CPU per GiB of channel frames read from a TLS socket (uvloop).

A sender process writes 64 KiB edge Data frames over TLS 1.3 on 127.0.0.1 as fast as it can;
the receiver decodes them with `ChannelConnection` either as an asyncio Protocol (uvloop joins
the decrypted TLS records, `receive_data` copies partial frames) or as a BufferedProtocol
(uvloop decrypts into the decoder's receive area: `receive_buffer` / `received`). Rounds
alternate between the two; reported are the receiver's CPU seconds per GiB (user + system,
median and min-max) and the ratio.

Usage: ``.venv/bin/python bench/link_receive.py [--mib 1024] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import ssl
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402

from tunneler.channel.connection import ChannelConnection  # noqa: E402
from tunneler.channel.message import encode  # noqa: E402
from tunneler.controller import pki  # noqa: E402
from tunneler.edge import messages as edge  # noqa: E402

FRAME = encode(edge.data(7, 1, bytes(64 * 1024)))


def _send(port: int, cafile: str, total: int) -> None:
    async def main() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                        server_hostname="localhost")
        for _ in range(total // len(FRAME)):
            writer.write(FRAME)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
    uvloop.run(main())


class _Receiver:
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.channel = ChannelConnection()
        self.done = done
        self.frames = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(self.frames)


class _Copied(_Receiver, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.frames += len(self.channel.receive_data(data))


class _Buffered(_Receiver, asyncio.BufferedProtocol):  # uvloop: not also an asyncio.Protocol
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.channel.receive_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.frames += len(self.channel.received(nbytes))


async def _receive(buffered: bool, server: ssl.SSLContext, cafile: str, total: int) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    kind = _Buffered if buffered else _Copied
    listener = await loop.create_server(lambda: kind(done), "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    sender = multiprocessing.get_context("spawn").Process(target=_send,
                                                           args=(port, cafile, total))
    before = resource.getrusage(resource.RUSAGE_SELF)
    sender.start()
    frames = await done
    after = resource.getrusage(resource.RUSAGE_SELF)
    sender.join()
    listener.close()
    if frames != total // len(FRAME):
        raise RuntimeError(f"received {frames} frames of {total // len(FRAME)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / (total / (1 << 30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = pki.Pki(Path(tmp) / "pki")
        pki.create_pki(paths, "localhost")
        server = pki.server_ssl_context(paths, "router", require_client_cert=False)
        results: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for buffered in (False, True):
                results[buffered].append(uvloop.run(_receive(buffered, server, str(paths.ca_cert),
                                                             args.mib << 20)))
    for buffered, label in ((False, "Protocol + receive_data"),
                            (True, "BufferedProtocol + received")):
        samples = results[buffered]
        print(f"{label:30s} {statistics.median(samples):.3f} CPU s/GiB "
              f"({min(samples):.3f}-{max(samples):.3f})")
    ratio = statistics.median(results[True]) / statistics.median(results[False])
    print(f"buffered / copied: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
