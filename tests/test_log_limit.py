"""One line per interval for a flood, each saying how many events it stands for."""
from __future__ import annotations

from edge.log_limit import LogLimit, held_back


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_the_first_event_is_logged_then_one_line_per_interval_counts_the_events_held_back():
    clock = Clock()
    limit = LogLimit(10.0, clock)
    assert limit.due() == 1  # the first: at once
    held = [limit.due() for _ in range(5)]
    assert held == [0] * 5
    clock.now_s += 9.9
    assert limit.due() == 0
    clock.now_s += 0.1
    assert limit.due() == 7  # the 5 held back, the one at 9.9 s, and this one
    clock.now_s += 30.0
    assert limit.due() == 1


def test_a_line_standing_for_more_than_its_own_event_says_how_many_more():
    assert held_back(1, "answered busy") == ""
    assert held_back(4, "answered busy") == " (3 more answered busy since the last such line)"
