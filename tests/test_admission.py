"""Who gets in, by the load the segmenter reports (`front/admission.py`), on its own."""

from __future__ import annotations

from front.admission import Admission
from transport.messages import Load


def test_a_session_that_ended_since_the_report_makes_room_for_the_next() -> None:
    """At a turnover the last report still counts the streams that just ended; counted beside
    the newcomers, they had refused clients at half capacity (the soak, every 60 s)."""
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0)
    admission.update(Load(streams=20, actors=2, busy=0.7, per_stream=0.08, queue_delay_s=0.0, queued_audio_s=0.0))
    assert admission.refusal() is None  # 21 x 0.08 = 1.68 <= 0.85 x 2
    admission.admitted()
    assert admission.refusal() is not None  # 22 x 0.08 = 1.76: full
    admission.ended()  # one of the twenty is over
    assert admission.refusal() is None


def test_a_burst_counts_in_full_before_the_next_report() -> None:
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0)
    admission.update(Load(streams=0, actors=2, busy=0.0, per_stream=0.25, queue_delay_s=0.0, queued_audio_s=0.0))
    admitted = 0
    while admission.refusal() is None:
        admission.admitted()
        admitted += 1
    assert admitted == 6  # 7 x 0.25 = 1.75 > 1.7
    admission.update(Load(streams=6, actors=2, busy=1.5, per_stream=0.25, queue_delay_s=0.0, queued_audio_s=0.0))
    assert admission.refusal() is not None


def test_models_behind_or_busy_refuse_whatever_the_count() -> None:
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0)
    admission.update(Load(streams=1, actors=2, busy=0.1, per_stream=0.0, queue_delay_s=1.5, queued_audio_s=3.0))
    assert getattr(admission.refusal(), "rule", None) == "behind"
    admission.update(Load(streams=1, actors=2, busy=1.8, per_stream=0.0, queue_delay_s=0.0, queued_audio_s=0.0))
    assert getattr(admission.refusal(), "rule", None) == "busy"
