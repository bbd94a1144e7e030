"""The fuzz pass's memory check tells a leak from a moment's allocation."""

from __future__ import annotations

import random

import pytest

from tests.fuzz.conftest import LEAK_BYTES, growth_per_example

CHECKPOINTS = list(range(1000, 2001, 100))  # the second half of a 2,000-example run


def noisy(level: int, per_example: float, seed: int = 3) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(x, round(level + per_example * x + rng.uniform(-2000, 2000))) for x in CHECKPOINTS]


def test_a_leak_is_seen_through_the_noise() -> None:
    assert growth_per_example(noisy(900_000, LEAK_BYTES * 2)) > LEAK_BYTES


def test_a_flat_level_is_not_a_leak() -> None:
    assert abs(growth_per_example(noisy(900_000, 0))) < LEAK_BYTES


def test_an_allocation_alive_at_the_last_checkpoints_only_is_not_a_leak() -> None:
    """Regression: the least-squares slope read a 205 KB body, still in flight at the last
    two checkpoints of a backend fuzz run whose final measure was back at its level, as
    201 bytes per example, and failed one run in four."""
    sizes = noisy(900_000, 0)
    sizes[-3:-1] = [(x, y + 205_000) for x, y in sizes[-3:-1]]
    assert abs(growth_per_example(sizes)) < LEAK_BYTES


def test_two_measures_at_the_same_example_cannot_make_a_slope() -> None:
    with pytest.raises(ValueError, match="two different examples"):
        growth_per_example([(5, 1), (5, 2)])
