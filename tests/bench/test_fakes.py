"""The providers' latencies of the turn bench's fakes (``--realistic``): each is a fixed
delay or a range drawn from a seeded generator, so a realistic run can be repeated."""

from __future__ import annotations

import random

import pytest
from bench._fake_replies import FakeLLM, FakeTTS
from bench._fakes import REALISTIC, Delay, FakeSTT


def test_a_range_is_drawn_within_its_bounds_and_repeats_with_the_same_seed() -> None:
    first = Delay("ttft", (0.3, 0.6), random.Random(7))
    second = Delay("ttft", (0.3, 0.6), random.Random(7))
    drawn = [first.draw() for _ in range(50)]
    assert all(0.3 <= d <= 0.6 for d in drawn)
    assert len(set(drawn)) > 40  # drawn, not fixed
    assert [second.draw() for _ in range(50)] == drawn


def test_a_fixed_delay_is_always_itself_and_zero_means_none() -> None:
    fixed = Delay("ttfb", 0.15, None)
    assert [fixed.draw() for _ in range(3)] == [0.15] * 3
    assert fixed.label == "150ms"
    assert not Delay("ttfb", 0.0, None)


@pytest.mark.parametrize(
    ("latency", "rng", "message"),
    [
        ((0.6, 0.3), random.Random(1), "seconds >= 0"),
        (-0.1, None, "seconds >= 0"),
        ((0.1, 0.2), None, "pass rng"),
        ((0.1,), random.Random(1), "(low, high)"),
    ],
)
def test_a_bad_latency_is_refused_with_its_name(
    latency: object, rng: random.Random | None, message: str
) -> None:
    with pytest.raises(ValueError, match="final_delay") as caught:
        Delay("final_delay", latency, rng)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_the_realistic_latencies_are_what_the_benchmarks_page_says() -> None:
    rng = random.Random(7)
    stt = FakeSTT(lambda: "", rng=rng, **REALISTIC["stt"])
    llm = FakeLLM("Sure.", rng=rng, **REALISTIC["llm"])
    tts = FakeTTS(rng=rng, **REALISTIC["tts"])
    assert (stt.final_delay.low, stt.final_delay.high) == (0.15, 0.30)
    assert (llm.ttft.low, llm.ttft.high) == (0.30, 0.60)
    assert (tts.ttfb.low, tts.ttfb.high) == (0.10, 0.20)
    assert "150-300ms" in stt.model and "100-200ms" in tts.model
