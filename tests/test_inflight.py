"""The bridge's in-flight bookkeeping (pure): which delivery is acked when, and on which connection.

The end-to-end cases are in tests/test_bridge_overload.py; these pin the rules of
vitalchain.ingest.inflight one by one, including the orders the real broker produces rarely.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.ingest.inflight import InFlight


def _tokens(deliveries: list) -> list[int]:
    return [d.token for d in deliveries]


def test_a_new_message_under_an_id_in_flight_is_produced_and_acked_after_the_earlier_one() -> None:
    held = InFlight()
    first, kind1 = held.arrive(0, 7, 1, "vitals/a", b"one")
    second, kind2 = held.arrive(0, 7, 1, "vitals/b", b"two")
    assert (kind1, kind2) == ("new", "same_id")
    assert held.expect(first, 1) == [] and held.expect(second, 2) == []
    assert held.record_done(second.token) == []
    assert held.record_done(second.token) == []  # produced, but its PUBACK would remove `first`
    assert held.waiting_for_order == 1 and len(held) == 2
    assert _tokens(held.record_done(first.token)) == [first.token, second.token]
    assert len(held) == 0 and held.waiting_for_order == 0 and held.released == 2


def test_identical_bytes_under_one_id_in_one_connection_are_two_messages() -> None:
    """Within a connection Mosquitto never resends: equal bytes are a device's resend, and each
    in-flight copy needs its own PUBACK."""
    held = InFlight()
    first, _ = held.arrive(0, 9, 1, "vitals/a", b"same")
    second, kind = held.arrive(0, 9, 1, "vitals/a", b"same")
    assert kind == "same_id" and first is not second


def test_a_redelivery_adopts_the_stale_delivery_still_being_produced() -> None:
    held = InFlight()
    old, _ = held.arrive(0, 5, 1, "vitals/a", b"r")
    held.expect(old, 1)
    again, kind = held.arrive(1, 5, 1, "vitals/a", b"r")  # reconnect: Mosquitto resends it
    assert kind == "adopted" and again is old and again.connection == 1
    assert held.stale == 0 and len(held) == 1
    finished = held.record_done(old.token)
    assert finished == [old] and finished[0].connection == 1  # acked on the new connection


def test_a_stale_delivery_finished_before_its_redelivery_gets_no_ack_and_is_produced_again() -> None:
    held = InFlight()
    old, _ = held.arrive(0, 5, 1, "vitals/a", b"r")
    held.expect(old, 1)
    other, _ = held.arrive(1, 6, 1, "vitals/b", b"x")  # first PUBLISH of the new connection
    held.expect(other, 1)
    assert held.stale == 1
    finished = held.record_done(old.token)
    assert finished == [old] and old.connection == 0 != held.connection  # the caller acks none
    again, kind = held.arrive(1, 5, 1, "vitals/a", b"r")
    assert kind == "new" and again is not old


def test_a_delivery_waiting_for_order_at_a_reconnect_is_dropped_for_its_redelivery() -> None:
    held = InFlight()
    first, _ = held.arrive(0, 3, 1, "vitals/a", b"1")
    second, _ = held.arrive(0, 3, 1, "vitals/a", b"2")
    held.expect(first, 1)
    held.expect(second, 1)
    held.record_done(second.token)
    assert held.waiting_for_order == 1
    again, kind = held.arrive(1, 3, 1, "vitals/a", b"1")
    assert kind == "adopted" and again is first
    assert held.waiting_for_order == 0 and len(held) == 1  # `second` left for its redelivery
    redelivered, kind = held.arrive(1, 3, 1, "vitals/a", b"2")
    assert kind == "same_id"
    held.expect(redelivered, 1)
    assert held.record_done(redelivered.token) == []  # still behind `first`
    assert _tokens(held.record_done(first.token)) == [first.token, redelivered.token]


def test_a_different_message_under_a_stale_id_is_not_adopted() -> None:
    held = InFlight()
    old, _ = held.arrive(0, 4, 1, "vitals/a", b"old")
    held.expect(old, 1)
    new, kind = held.arrive(1, 4, 1, "vitals/a", b"new")
    assert kind == "new" and new is not old and held.stale == 1


def test_qos0_and_recordless_deliveries_finish_at_once() -> None:
    held = InFlight()
    zero, _ = held.arrive(0, 0, 0, "vitals/a", b"q0")
    assert held.expect(zero, 1) == [] and held.record_done(zero.token) == [zero]
    empty, _ = held.arrive(0, 1, 1, "vitals/a", b"")
    assert held.expect(empty, 0) == [empty]
    assert len(held) == 0 and held.released == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["arrive", "done", "reconnect"]),
                          st.integers(1, 4), st.integers(0, 2)), max_size=60),
       st.integers(0, 2**32))
def test_every_publish_is_released_once_and_acks_per_id_keep_arrival_order(
        steps: list[tuple[str, int, int]], seed: int) -> None:
    """Random arrivals, completions and reconnects: arrivals minus releases is what is held;
    each connection's PUBACKs per id go out in that connection's arrival order, each once."""
    rng = random.Random(seed)
    held = InFlight()
    connection, arrived = 0, 0
    arrivals: dict[tuple[int, int], list[int]] = {}  # (connection, mid) -> tokens in order
    acks: dict[tuple[int, int], list[int]] = {}
    pending: list[int] = []
    for action, mid, payload in steps:
        if action == "reconnect":
            connection += 1
        elif action == "arrive":
            arrived += 1
            delivery, kind = held.arrive(connection, mid, 1, "vitals/a", bytes([payload]))
            arrivals.setdefault((connection, mid), []).append(delivery.token)
            if kind != "adopted":
                for finished in held.expect(delivery, 1):
                    acks.setdefault((finished.connection, finished.mid), []).append(finished.token)
                pending.append(delivery.token)
        elif pending:
            token = pending.pop(rng.randrange(len(pending)))
            for finished in held.record_done(token):
                if finished.connection == held.connection:  # the bridge acks only these
                    acks.setdefault((finished.connection, finished.mid), []).append(finished.token)
        assert arrived - held.released == len(held)
    for key, tokens in acks.items():
        assert len(tokens) == len(set(tokens)), "a delivery acked twice"
        order = arrivals[key]
        assert tokens == order[:len(tokens)], f"acks {tokens} not in arrival order {order}"
