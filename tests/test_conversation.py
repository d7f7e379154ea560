"""The checks every end-to-end test relies on can fail: each is shown a transcript that breaks
one rule (a check that cannot fail hides the loss it was written to catch)."""

from __future__ import annotations

from typing import Any

import pytest

from conversation import Transcript, check_regions_answered, check_segmented_order


def region(start: float, end: float, final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    answer = final or {"type": "segment", "channel": 0, "start_time": start, "end_time": end, "is_final": True}
    return [{"type": "active", "channel": 0, "time": start}, {"type": "inactive", "channel": 0, "time": end}, answer]


GOOD = region(0.5, 1.5) + region(2.0, 3.0)


def test_a_sound_transcript_passes() -> None:
    assert check_regions_answered(Transcript(GOOD, 1000), 0) == (2, 0)
    check_segmented_order(Transcript(GOOD, 1000), 0)


BROKEN: list[tuple[str, list[dict[str, Any]], int]] = [
    ("a region without its final", GOOD[:-1], 1000),
    ("a final twice", [*GOOD, GOOD[-1]], 1000),
    ("a final before its inactive", [GOOD[0], GOOD[2], GOOD[1], *GOOD[3:]], 1000),
    ("a final with other times", [*GOOD[:-1], {**GOOD[-1], "end_time": 2.9}], 1000),
    ("a stream-level error where no stage died",
     [*GOOD[:4], {"type": "error", "channel": 0, "message": "results did not arrive"}], 1011),
    ("another close code", GOOD, 1011),
]


@pytest.mark.parametrize(("messages", "code"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_broken_rule_is_caught(messages: list[dict[str, Any]], code: int) -> None:
    with pytest.raises(AssertionError):
        check_regions_answered(Transcript(messages, code), 0)


def test_a_lost_stream_passes_only_where_a_stage_was_killed() -> None:
    lost = Transcript([*GOOD[:4], {"type": "error", "channel": 0, "message": "the decoder died"}], 1011)
    assert check_regions_answered(lost, 0, stage_died=True) == (1, 0)


def test_an_error_or_a_stray_interim_fails_an_undisturbed_stream() -> None:
    error = {"type": "error", "channel": 0, "message": "inference failed for 2.00-3.00", "start_time": 2.0,
             "end_time": 3.0}
    with pytest.raises(AssertionError):
        check_segmented_order(Transcript(region(0.5, 1.5) + region(2.0, 3.0, error), 1000), 0)
    stray = {"type": "segment", "channel": 0, "start_time": 1.6, "end_time": 1.8, "is_final": False}
    with pytest.raises(AssertionError):
        check_segmented_order(Transcript([*GOOD[:3], stray, *GOOD[3:]], 1000), 0)
