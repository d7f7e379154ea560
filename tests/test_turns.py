"""Whose turn it is to send a model actor a packet, with several shards (`actors/turns.py`), on
its own: what each shard is told, call by call, with the time given by hand."""

from __future__ import annotations

from streamer.actors.turns import OFFER_S, Turns
from streamer.transport.messages import BUSY, GRANTED


def call(turns: Turns, shard: int, now: float, waiting: bool = False) -> list[tuple[int, int]]:
    """A call of `shard`'s packet, start to end: what is said after its `Done`."""
    assert turns.began(shard) == [(k, shard) for k in range(turns.shards)]
    turns.answered(shard)
    return turns.settle(waiting, now)


def test_nobody_asking_nothing_is_said_but_whose_call_begins() -> None:
    turns = Turns(3)
    assert call(turns, 1, 0.0) == []  # shard 1's `Done` frees the actor for it; the others count it busy
    assert turns.settle(False, 5.0) == []


def test_a_shard_that_asks_an_idle_actor_gets_the_turn_at_once_and_the_one_that_counted_it_free_hears_busy() -> None:
    turns = Turns(2)
    assert call(turns, 0, 0.0) == []
    turns.want(1, 0.0)
    assert turns.settle(False, 0.1) == [(0, BUSY), (1, GRANTED)]


def test_turns_go_round_from_the_shard_just_served_so_one_with_a_backlog_takes_its_turn() -> None:
    turns = Turns(3)
    turns.began(2)
    for k in (0, 1, 2):
        turns.want(k, 0.0)
    turns.answered(2)
    assert turns.settle(False, 0.0) == [(2, BUSY), (0, GRANTED)]  # not 2 again, though it asked too
    assert call(turns, 0, 1.0) == [(0, BUSY), (1, GRANTED)]
    assert call(turns, 1, 2.0) == [(1, BUSY), (2, GRANTED)]
    assert call(turns, 2, 3.0) == []  # everyone has had the turn it asked for


def test_a_packet_waiting_means_no_turn_is_given_and_whoever_counts_the_actor_free_hears_busy() -> None:
    turns = Turns(2)
    turns.want(1, 0.0)
    assert call(turns, 0, 0.0, waiting=True) == [(0, BUSY)]  # (shard 1 heard the call begin)
    assert turns.holder is None and list(turns.wanting) == [1]  # its turn comes when nothing waits


def test_a_pass_gives_the_turn_to_the_next_asker_and_a_pass_from_another_changes_nothing() -> None:
    turns = Turns(3)
    turns.began(0)
    turns.want(1, 0.0)
    turns.want(2, 0.0)
    assert turns.settle(False, 0.0) == [(1, GRANTED)]
    turns.passed(2)  # not its turn: stale
    assert turns.holder == 1 and turns.settle(False, 0.0) == []
    turns.passed(1)
    assert turns.settle(False, 0.0) == [(2, GRANTED)]


def test_a_turn_nobody_takes_lapses_and_its_shard_hears_busy() -> None:
    """The shard given the turn died or is restarting: after `OFFER_S` the next asker gets it,
    and the silent one is told not to send on the old turn."""
    turns = Turns(2)
    turns.began(0)
    turns.want(1, 0.0)
    assert turns.settle(False, 10.0) == [(1, GRANTED)]
    turns.want(0, 0.0)
    assert turns.settle(False, 10.0 + OFFER_S / 2) == []
    assert turns.settle(False, 10.0 + OFFER_S * 1.01) == [(1, BUSY), (0, GRANTED)]


def test_a_new_segmenter_asked_for_nothing_and_loses_a_turn_its_predecessor_held() -> None:
    turns = Turns(2)
    turns.began(0)
    turns.want(1, 0.0)
    assert turns.settle(False, 0.0) == [(1, GRANTED)]
    turns.forgotten(1)
    assert turns.holder is None and turns.settle(False, 0.0) == []
    turns.want(0, 0.0)
    assert turns.settle(False, 0.0) == [(1, BUSY), (0, GRANTED)]  # shard 1's new segmenter counted it free


def test_a_shard_that_keeps_a_packet_queued_cannot_hold_an_asker_off_for_ever() -> None:
    """Found by a hostile review: with a packet always waiting (another shard with a credit of
    two, or interims, which ask for no turn), a turn was never given. Once an asker has waited
    `OFFER_S`, it gets the turn even so."""
    turns = Turns(2)
    turns.want(0, 0.0)
    now = 0.0
    for _ in range(3):
        now += OFFER_S / 4
        assert call(turns, 1, now, waiting=True) == [(1, BUSY)]
    assert call(turns, 1, OFFER_S * 1.01, waiting=True) == [(1, BUSY), (0, GRANTED)]
