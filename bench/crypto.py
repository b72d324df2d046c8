"""Secretstream micro-benchmark: PyNaCl (bundled libsodium) against tunneler.edge.secretstream.

Both implementations push and pull the same message size in the same run, on one core, and
each measurement checks its result against the other implementation once (byte-exact chunk,
identical plaintext) before timing. Prints MB/s (10**6 bytes of plaintext per second) and the
speed-up.

Usage: `.venv/bin/python bench/crypto.py [--size 65536] [--mib 256] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacl import bindings as sodium  # noqa: E402

from tunneler.edge import secretstream  # noqa: E402

State = sodium.crypto_secretstream_xchacha20poly1305_state
TAG = secretstream.TAG_MESSAGE


def _nacl_state(key: bytes, header: bytes) -> State:
    """A libsodium state as init_push would make it for `header` (init_pull builds the same)."""
    state = State()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state


def _pushers(key: bytes, header: bytes) -> dict[str, Callable[[bytes], bytes]]:
    nacl_state, ours = _nacl_state(key, header), secretstream.PushStream(key, header)
    return {
        "pynacl": lambda m: sodium.crypto_secretstream_xchacha20poly1305_push(
            nacl_state, m, None, TAG),
        "tunneler": ours.push,
    }


def _pullers(key: bytes, header: bytes) -> dict[str, Callable[[bytes], bytes]]:
    nacl_state, ours = _nacl_state(key, header), secretstream.PullStream(key, header)
    return {
        "pynacl": lambda c: sodium.crypto_secretstream_xchacha20poly1305_pull(
            nacl_state, c, None)[0],
        "tunneler": lambda c: ours.pull(c)[0],
    }


def _rate(operation: Callable[[bytes], bytes], inputs: list[bytes], size: int) -> float:
    start = time.perf_counter()
    for item in inputs:
        operation(item)
    return len(inputs) * size / (time.perf_counter() - start) / 1e6


def _check(key: bytes, header: bytes, message: bytes) -> list[bytes]:
    """Byte-exactness gate, and the chunk sequence the pull runs decrypt."""
    push = _pushers(key, header)
    chunks = [push["pynacl"](message) for _ in range(3)]
    if [push["tunneler"](message) for _ in range(3)] != chunks:
        raise SystemExit("push outputs differ between PyNaCl and tunneler")
    pull = _pullers(key, header)
    if any(pull["tunneler"](c) != message or pull["pynacl"](c) != message for c in chunks):
        raise SystemExit("pull outputs differ between PyNaCl and tunneler")
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=65536, help="message bytes")
    parser.add_argument("--mib", type=int, default=256, help="plaintext MiB per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    args = parser.parse_args()
    key, header, message = os.urandom(32), os.urandom(24), os.urandom(args.size)
    _check(key, header, message)
    count = max(1, args.mib * 2**20 // max(args.size, 1))
    # Chunks for pull: the stream from the start, as both pullers see it.
    reference = _pushers(key, header)["pynacl"]
    chunks = [bytes(reference(message)) for _ in range(count)]
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for name, push in _pushers(key, header).items():
            rate = _rate(push, [message] * count, args.size)
            best[name, "push"] = max(best.get((name, "push"), 0.0), rate)
        for name, pull in _pullers(key, header).items():
            rate = _rate(pull, chunks, args.size)
            best[name, "pull"] = max(best.get((name, "pull"), 0.0), rate)
    print(f"secretstream xchacha20poly1305, {args.size}-byte messages, {count} per run, "
          f"best of {args.repeat}")
    for op in ("push", "pull"):
        nacl, ours = best["pynacl", op], best["tunneler", op]
        print(f"  {op}: pynacl {nacl:8.1f} MB/s   tunneler {ours:8.1f} MB/s   x{ours / nacl:.2f}")


if __name__ == "__main__":
    main()
