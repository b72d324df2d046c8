"""Terminator table: the hosts' listeners per service, and the pick for a new circuit.

Selection follows the controller's default strategy closely enough for a single router:
precedence first (required > default > failed), then lowest cost, then random among equals.
"""

from __future__ import annotations

import random

from tunneler.edge.messages import PRECEDENCE_DEFAULT, PRECEDENCE_FAILED, PRECEDENCE_REQUIRED
from tunneler.router.state import Terminator

_RANK = {PRECEDENCE_REQUIRED: 0, PRECEDENCE_DEFAULT: 1, PRECEDENCE_FAILED: 2}


class TerminatorTable:
    """Terminators by service id."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._by_service: dict[str, list[Terminator]] = {}
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        return sum(len(terminators) for terminators in self._by_service.values())

    def add(self, terminator: Terminator) -> None:
        """Register a terminator."""
        self._by_service.setdefault(terminator.session.service_id, []).append(terminator)

    def remove(self, terminator: Terminator) -> bool:
        """Forget a terminator; False if it was not registered."""
        terminators = self._by_service.get(terminator.session.service_id)
        if not terminators or terminator not in terminators:
            return False
        terminators.remove(terminator)
        if not terminators:
            del self._by_service[terminator.session.service_id]
        return True

    def all(self) -> list[Terminator]:
        """Every terminator (a snapshot)."""
        return [t for terminators in self._by_service.values() for t in terminators]

    def select(self, service_id: str, identity: str | None = None) -> Terminator | None:
        """The best terminator for `service_id` (restricted to `identity` if given), or None."""
        candidates = self._by_service.get(service_id, [])
        if identity:
            candidates = [t for t in candidates if t.identity == identity]
        if not candidates:
            return None
        best = min(_key(t) for t in candidates)
        return self._rng.choice([t for t in candidates if _key(t) == best])


def _key(terminator: Terminator) -> tuple[int, int]:
    return _RANK.get(terminator.precedence, _RANK[PRECEDENCE_DEFAULT]), terminator.cost
