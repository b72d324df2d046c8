"""Fuzzing benchmark: a million mutants through every decoder that takes outside input.

The harness of tests/support/fuzz.py (what CI runs with 51,000 inputs in
tests/integration/test_fuzz_scale.py): the TUN packet parser and the replies built from it,
the DNS responder, the upstream-reply check, channel framing, edge messages and app data,
policy files, identity files and JWTs, seeded from the named corpus (tests/corpus/). Prints
inputs, acceptances and rejections by reason per target, the rate, and every crash with its
input; exits 1 if anything crashed. No root needed.

Usage: `.venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed N] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 32))
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        targets = fuzz.targets(Path(work))
        started = time.perf_counter()
        tallies = fuzz.run(targets, args.inputs, seed=args.seed)
        elapsed = time.perf_counter() - started
    total = sum(t.inputs for t in tallies.values())
    crashes = sum(len(t.crashes) for t in tallies.values())
    print(f"seed {args.seed}: {total} inputs in {elapsed:.1f} s ({total / elapsed:,.0f}/s), "
          f"{crashes} crashes")
    for name, tally in tallies.items():
        reasons = ", ".join(f"{r} {n}" for r, n in tally.rejected.most_common(4))
        print(f"  {name:14} {tally.inputs:8} inputs {tally.accepted:8} accepted  "
              f"rejected: {reasons}")
        for error, data in tally.crashes[:5]:
            print(f"    CRASH {error}\n      input {data}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seed": args.seed, "inputs": total, "seconds": elapsed, "crashes": crashes,
            "targets": {name: {"inputs": t.inputs, "accepted": t.accepted,
                               "rejected": dict(t.rejected), "crashes": t.crashes}
                        for name, t in tallies.items()}}, indent=2))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
