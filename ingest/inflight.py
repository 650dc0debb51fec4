"""Which MQTT deliveries the bridge holds, and when each may be acknowledged (pure bookkeeping).

Why this is more than a dict keyed by packet id (docs/DECISIONS.md D18): a packet id names a
message only while it is in flight, and Mosquitto can have two messages in flight to the bridge
under one packet id. It numbers a message for a subscriber when it *queues* it, so a backlog of
more than 65,535 messages holds every id more than once, and Mosquitto 2.0.11 moves up to Receive
Maximum queued messages into flight on *every* PUBACK, so far more than Receive Maximum (and more
than 65,535) are in flight at once. Two rules follow from how Mosquitto handles a PUBACK (it
removes the *first* in-flight message with that id):

1. Within one connection every PUBLISH is a message of its own, even under an id the bridge is
   still producing: it is produced and acked like any other, never taken for a redelivery.
2. PUBACKs for one id go out in the order the PUBLISHes came in; a later delivery whose records
   are in Kafka waits (``waiting_for_order``) until the earlier ones under its id are acked, or its
   ack would remove the earlier message from Mosquitto before that one's records are in Kafka.

Redeliveries only come on a new connection (Mosquitto 2.0 resends unacknowledged messages on
reconnect, never within a connection). Deliveries from a lost connection become *stale*: their
PUBACK must not go out (it would land on the new connection and could remove another message that
took the id since), so they are finished without an ack. A redelivery that matches a stale
delivery still being produced (same id, topic and payload) adopts it: its records are not produced
a second time, and the delivery is acked on the new connection once they are in Kafka.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass


@dataclass
class Delivery:
    """One PUBLISH the bridge holds; finished when all its records are in Kafka."""

    token: int
    mid: int
    qos: int
    connection: int  # which connection it arrived on (the one its PUBACK must go out on)
    topic: str
    payload: bytes
    outstanding: int = 0  # records not yet acknowledged by Kafka
    produced: bool = False  # all its records are in Kafka


class InFlight:
    """Deliveries by token; per-packet-id order for the current connection; stale ones by id."""

    def __init__(self) -> None:
        self.connection = 0
        self._by_token: dict[int, Delivery] = {}
        self._lanes: dict[int, deque[Delivery]] = {}  # current connection, arrival order per id
        self._stale: dict[int, list[Delivery]] = {}  # lost connections, still being produced
        self._tokens = itertools.count(1)
        self.waiting_for_order = 0  # produced, waiting for an earlier delivery under their id
        self.stale = 0  # deliveries from lost connections still held
        self.released = 0  # PUBLISHes the bridge holds no more (finished, dropped or adopted)

    def __len__(self) -> int:
        return len(self._by_token)

    def arrive(self, connection: int, mid: int, qos: int, topic: str, payload: bytes
               ) -> tuple[Delivery, str]:
        """Register one PUBLISH. Returns the delivery and what it is: ``"new"`` (produce its
        records), ``"same_id"`` (new, though an earlier delivery under its id is in flight: produce
        it too) or ``"adopted"`` (a redelivery of a stale delivery still being produced: produce
        nothing, the stale delivery now belongs to this connection)."""
        if connection != self.connection:
            self._new_connection(connection)
        if qos > 0:
            for candidate in self._stale.get(mid, ()):
                if candidate.topic == topic and candidate.payload == payload:
                    self._stale[mid].remove(candidate)
                    if not self._stale[mid]:
                        del self._stale[mid]
                    self.stale -= 1
                    candidate.connection = connection
                    self._lanes.setdefault(mid, deque()).append(candidate)
                    self.released += 1  # this PUBLISH is held as the stale delivery it adopted
                    return candidate, "adopted"
        delivery = Delivery(next(self._tokens), mid, qos, connection, topic, payload)
        self._by_token[delivery.token] = delivery
        kind = "new"
        if qos > 0:
            lane = self._lanes.setdefault(mid, deque())
            if lane:
                kind = "same_id"
            lane.append(delivery)
        return delivery, kind

    def expect(self, delivery: Delivery, records: int) -> list[Delivery]:
        """Set how many records the delivery waits for; with none it is produced at once."""
        delivery.outstanding = records
        return self._produced(delivery) if records == 0 else []

    def record_done(self, token: int) -> list[Delivery]:
        """One record of the delivery is in Kafka. Returns the deliveries now finished, in the
        order their PUBACKs must go out; those of an older connection than theirs get none."""
        delivery = self._by_token.get(token)
        if delivery is None:
            return []
        delivery.outstanding -= 1
        if delivery.outstanding > 0:
            return []
        return self._produced(delivery)

    def _produced(self, delivery: Delivery) -> list[Delivery]:
        delivery.produced = True
        if delivery.qos == 0:
            del self._by_token[delivery.token]
            self.released += 1
            return [delivery]
        if delivery.connection != self.connection:  # stale: finished without an ack
            stale = self._stale.get(delivery.mid, [])
            if delivery in stale:
                stale.remove(delivery)
                self.stale -= 1
                if not stale:
                    self._stale.pop(delivery.mid, None)
            del self._by_token[delivery.token]
            self.released += 1
            return [delivery]
        lane = self._lanes[delivery.mid]
        self.waiting_for_order += 1
        finished: list[Delivery] = []
        while lane and lane[0].produced:
            head = lane.popleft()
            self.waiting_for_order -= 1
            del self._by_token[head.token]
            self.released += 1
            finished.append(head)
        if not lane:
            del self._lanes[delivery.mid]
        return finished

    def _new_connection(self, connection: int) -> None:
        """Everything of the old connection becomes stale; what is produced already is dropped
        (Mosquitto redelivers it, and the redelivery is produced again: a duplicate, never a
        loss)."""
        for lane in self._lanes.values():
            for delivery in lane:
                if delivery.produced:
                    self.waiting_for_order -= 1
                    del self._by_token[delivery.token]
                    self.released += 1
                else:
                    self._stale.setdefault(delivery.mid, []).append(delivery)
                    self.stale += 1
        self._lanes.clear()
        self.connection = connection
