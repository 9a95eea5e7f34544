"""Replay buffer for iterative RL (DeepSeekMath §4.1.4): reward-model batches mix new data with
a share of historical data.

``mixed_batch_counts(batch_size, ratio)`` decides how many rows of a batch are historical:
exactly ``batch_size * ratio`` when that is an integer (10% of 20 = 2), otherwise one of the two
nearest integers, chosen at random so that the expected share is exactly ``ratio``.
``ReplayBuffer`` holds past examples (any picklable rows: token ids and labels), bounded by
``capacity`` with reservoir sampling so that it stays a uniform sample of everything added, and
round-trips through ``state_dict`` / ``load_state_dict`` (saved with the checkpoint).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsm_engine.config import ConfigError


@dataclass
class ReplayConfig:
    """``ratio``: share of each reward-model batch drawn from history (paper: 10%).
    ``capacity``: the most examples kept (a uniform reservoir over everything seen)."""

    ratio: float = 0.1
    capacity: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"replay.ratio must be in [0, 1), got {self.ratio}")
        if self.capacity < 1:
            raise ConfigError(f"replay.capacity must be >= 1, got {self.capacity}")


def mixed_batch_counts(batch_size: int, ratio: float, rng: random.Random) -> tuple[int, int]:
    """``(new, historical)`` row counts of one batch; historical share is ``ratio`` in
    expectation and exactly when ``batch_size * ratio`` is an integer."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    want = batch_size * ratio
    nearest = round(want)
    if math.isclose(want, nearest, rel_tol=0.0, abs_tol=1e-9):
        hist = int(nearest)
    else:
        lo = math.floor(want)
        hist = lo + (1 if rng.random() < want - lo else 0)
    return batch_size - hist, hist


class ReplayBuffer:
    """Historical reward-model examples with uniform reservoir eviction."""

    def __init__(self, capacity: int = 100_000, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: list[Any] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, rows: Sequence[Any]) -> None:
        """Add rows (reservoir sampling once full: each row seen is kept with equal chance)."""
        for row in rows:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(row)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.capacity:
                    self.items[j] = row

    def sample(self, k: int) -> list[Any]:
        """``k`` rows uniformly (without replacement when the buffer holds enough)."""
        if k <= 0:
            return []
        if not self.items:
            raise ValueError("sample from an empty replay buffer")
        if k <= len(self.items):
            return self.rng.sample(self.items, k)
        return [self.rng.choice(self.items) for _ in range(k)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "items": list(self.items),
            "seen": self.seen,
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.items = list(state["items"])
        self.seen = int(state["seen"])
        self.rng.setstate(state["rng"])


class MixedBatcher:
    """Batches of ``batch_size`` rows: new rows (shuffled, epoch after epoch) plus a
    ``ratio`` share from the replay buffer. Without history every row is new.

    Each returned row is ``(row, is_historical)``.
    """

    def __init__(
        self, new_rows: Sequence[Any], buffer: ReplayBuffer, ratio: float, seed: int = 0
    ) -> None:
        if not new_rows:
            raise ValueError("MixedBatcher: no new rows")
        self.new_rows = list(new_rows)
        self.buffer = buffer
        self.ratio = ratio
        self.rng = random.Random(seed)
        self._order: list[int] = []

    def _next_new(self) -> Any:
        if not self._order:
            self._order = list(range(len(self.new_rows)))
            self.rng.shuffle(self._order)
        return self.new_rows[self._order.pop()]

    def next_batch(self, batch_size: int) -> list[tuple[Any, bool]]:
        ratio = self.ratio if len(self.buffer) else 0.0
        n_new, n_hist = mixed_batch_counts(batch_size, ratio, self.rng)
        rows = [(self._next_new(), False) for _ in range(n_new)]
        rows += [(r, True) for r in self.buffer.sample(n_hist)]
        self.rng.shuffle(rows)
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "order": list(self._order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self._order = list(state["order"])
