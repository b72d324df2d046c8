"""The 60-second soak of CI (issue 9, item 8): bench/soak.py with 200 concurrent flows through
`tunneler run` → `network serve` → run-host; zero failed or corrupted flows and at most 16 MiB
of resident-memory growth per process after the warm-up. `bench/soak.py` runs 10 minutes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import soak  # noqa: E402

SECONDS = 60.0
FLOWS = 200


def test_two_hundred_flows_for_a_minute_fail_none_and_grow_no_process_past_16_mib() -> None:
    result = soak.orchestrate(SECONDS, FLOWS)
    print(f"soak: {result['counts']}, RSS before {result['rss_before_mib']} MiB, "
          f"growth {result['rss_growth_mib']} MiB")
    assert result["counts"]["ok"] > FLOWS
    assert result["counts"]["failed"] == 0 and result["counts"]["corrupt"] == 0
    assert all(growth <= soak.GROWTH_LIMIT / 2**20
               for growth in result["rss_growth_mib"].values()), result["rss_growth_mib"]
