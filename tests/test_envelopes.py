"""A request's routing frames put together within the envelope limits, without a socket."""

from __future__ import annotations

from jobstore.store.frames import Envelopes


def test_a_message_comes_whole_once_its_request_frame_arrives() -> None:
    envelopes = Envelopes(max_envelope=2, max_envelope_frame=8)
    assert envelopes.add(b"peer", more=True) is None
    assert envelopes.add(b"request", more=False) == [b"peer", b"request"]


def test_a_message_with_too_many_routing_frames_is_dropped_counted_and_the_next_one_comes() -> None:
    envelopes = Envelopes(max_envelope=1, max_envelope_frame=8)
    for frame in (b"a", b"b", b"c"):
        assert envelopes.add(frame, more=True) is None
    assert envelopes.add(b"request", more=False) is None
    assert envelopes.discarded == 1
    assert envelopes.add(b"peer", more=True) is None
    assert envelopes.add(b"next", more=False) == [b"peer", b"next"]


def test_a_routing_frame_over_the_size_limit_drops_its_message() -> None:
    envelopes = Envelopes(max_envelope=4, max_envelope_frame=4)
    assert envelopes.add(b"too long", more=True) is None
    assert envelopes.add(b"request", more=False) is None
    assert envelopes.discarded == 1
