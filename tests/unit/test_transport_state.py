"""The producer's pure delivery state machines: stream windows, file transfers, held files.

No sockets, threads or clocks: each test drives a machine with inputs (reads, acks, nacks,
answers, time) and checks what it says to do next, often against a simulated lossy network
and collector.
"""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.config import ProducerConfig
from producer.transport.held import HOLD_RETRY_MAX, HOLD_RETRY_MIN, HeldFiles
from producer.transport.runstate import Handoff, RunState
from producer.transport.tally import Tally
from producer.transport.transfer import FileTransfer, StatusOutcome
from producer.transport.window import Batch, Entry, NackOutcome, StreamWindow
from producer.wire import protocol

SHA = "ab" * 32


def _entry(seq: int, size: int = 10, file: protocol.FileRef | None = None) -> Entry:
    return Entry(seq, seq, (b"%d:" % seq).ljust(size, b"."), file)


def _window(acked: int = 0, **kwargs: int | float) -> StreamWindow:
    options: dict[str, int | float] = {
        "max_events": 10,
        "max_bytes": 10_000,
        "batch_events": 4,
        "batch_bytes": 1000,
        "resend_after": 2.0,
        "nack_quiet": 1.0,
    }
    options.update(kwargs)
    return StreamWindow(acked, **options)  # type: ignore[arg-type]


def _read(window: StreamWindow, last_written: int, size: int = 10) -> int:
    """Read what the window has room for from a log of ``last_written`` records, as the stream does.

    Each read takes up to ``room()`` records and stops once it holds ``batch_bytes`` (as
    ``LogReader.read`` does).
    """
    read = 0
    while (room := window.room()) and window.read_next <= last_written:
        taken = 0
        while taken < room and taken * size < window.batch_bytes and window.read_next <= last_written:
            window.push(_entry(window.read_next, size))
            taken += 1
        read += taken
    return read


def _seqs(batch: Batch) -> list[int]:
    return [int(body.split(b":")[0]) for body in batch.bodies]


def _check_window(window: StreamWindow) -> None:
    events = list(window.events)
    assert len(events) <= window.max_events
    assert 0 <= window.sent <= len(events)
    assert window.bytes == sum(len(e.body) for e in events)
    assert window.read_next == (events[-1].last + 1 if events else window.acked + 1)
    if events:
        assert events[0].seq == window.acked + 1
    for before, after in itertools.pairwise(events):
        assert after.seq == before.last + 1


# ------------------------------------------------------------------------------- windows


def test_a_window_sends_in_batches_and_an_ack_releases_them() -> None:
    window = _window()
    assert _read(window, 6) == 6
    first = window.next_step()
    assert isinstance(first, Batch)
    assert _seqs(first) == [1, 2, 3, 4]
    assert window.sent_through(first.end, now=0.0) == 4
    second = window.next_step()
    assert isinstance(second, Batch)
    assert _seqs(second) == [5, 6]
    window.sent_through(second.end, now=0.0)
    assert window.next_step() is None  # everything is in flight
    assert window.ack(3, now=0.5) is False
    assert [e.seq for e in window.events] == [4, 5, 6]
    assert window.sent == 3
    _check_window(window)


def test_a_batch_stops_at_its_byte_bound_but_always_holds_one_event() -> None:
    window = _window(batch_bytes=25)
    window.push(_entry(1, 40))  # alone above the bound
    window.push(_entry(2, 10))
    window.push(_entry(3, 10))
    step = window.next_step()
    assert isinstance(step, Batch)
    assert _seqs(step) == [1]
    window.sent_through(step.end, 0.0)
    step = window.next_step()
    assert isinstance(step, Batch)
    assert _seqs(step) == [2, 3]


def test_the_window_stops_reading_at_its_event_and_byte_bounds() -> None:
    window = _window(max_events=5)
    assert _read(window, 100) == 5
    assert window.room() == 0
    window.ack(2, 0.0)
    assert window.room() == 2
    by_bytes = _window(max_bytes=25, batch_events=2)
    assert _read(by_bytes, 100) == 4  # the read that passes the bound is the last one
    assert by_bytes.bytes == 40
    assert by_bytes.room() == 0


def test_acks_out_of_order_or_repeated_change_nothing() -> None:
    window = _window()
    _read(window, 8)
    step = window.next_step()
    assert isinstance(step, Batch)
    window.sent_through(step.end, 0.0)
    assert window.ack(3, now=1.0) is False
    assert window.ack(2, now=5.0) is None  # older than what is acknowledged: a late ack
    assert window.ack(3, now=5.0) is None
    assert window.acked == 3
    assert window.last_progress == 1.0  # a late ack is no progress
    assert [e.seq for e in window.events] == [4, 5, 6, 7, 8]
    _check_window(window)


def test_an_ack_beyond_what_was_read_moves_the_reading_on() -> None:
    window = _window()
    _read(window, 3)
    assert window.ack(7, now=0.0) is True  # the collector had more (a previous producer sent it)
    assert window.read_next == 8
    assert not window.events
    assert window.sent == 0
    _check_window(window)


def test_a_nack_rewinds_to_what_the_collector_expects_and_its_echoes_are_ignored() -> None:
    window = _window()
    _read(window, 4)
    step = window.next_step()
    assert isinstance(step, Batch)
    window.sent_through(step.end, 0.0)
    assert window.nack(3, now=1.0) is NackOutcome.REWOUND
    assert window.sent == 2
    again = window.next_step()
    assert isinstance(again, Batch)
    assert _seqs(again) == [3, 4]
    window.sent_through(again.end, 1.0)
    assert window.nack(3, now=1.5) is NackOutcome.ECHO  # the other out-of-order events in flight
    assert window.sent == 4
    assert window.nack(3, now=2.5) is NackOutcome.REWOUND  # later: a real loss again
    assert window.nack(9, now=5.0) is NackOutcome.IGNORED  # nothing in flight from there


def test_a_nack_for_acknowledged_events_asks_for_a_gap() -> None:
    window = _window(acked=10)
    _read(window, 12)
    assert window.nack(4, now=0.0) is NackOutcome.LOST_ACKED
    assert window.acked == 10
    assert window.sent == 0


def test_silence_resends_everything_in_flight_from_the_first_unacked_event() -> None:
    """After a reconnect (or a collector restart) without acks, what was in flight goes again."""
    window = _window()
    _read(window, 6)
    while isinstance(step := window.next_step(), Batch):
        window.sent_through(step.end, now=10.0)
    window.ack(2, now=11.0)
    assert not window.check_silence(now=12.9)
    assert window.check_silence(now=13.1)
    assert window.sent == 0
    resent = window.next_step()
    assert isinstance(resent, Batch)
    assert _seqs(resent)[0] == 3
    assert not window.check_silence(now=100.0)  # nothing is in flight any more


def test_silence_is_measured_from_the_first_send_after_an_idle_time() -> None:
    window = _window()
    _read(window, 2)
    step = window.next_step()
    assert isinstance(step, Batch)
    window.sent_through(step.end, now=50.0)  # last_progress was 0: the clock starts now
    assert not window.check_silence(now=51.0)


def test_a_refused_run_sends_nothing_until_the_pause_ends_then_starts_again_from_its_ack() -> None:
    window = _window()
    _read(window, 5)
    step = window.next_step()
    assert isinstance(step, Batch)
    window.sent_through(step.end, 0.0)
    window.ack(1, 0.0)
    window.pause(until=30.0)
    assert window.paused(29.9)
    assert not window.paused(30.0)
    assert window.sent == 0
    step = window.next_step()
    assert isinstance(step, Batch)
    assert _seqs(step) == [2, 3, 4, 5]


def test_an_event_with_a_file_blocks_until_the_file_is_done() -> None:
    ref = protocol.FileRef(sha256=SHA, size=100, name="a.png")
    window = _window()
    window.push(_entry(1))
    window.push(_entry(2, file=ref))
    window.push(_entry(3))
    step = window.next_step()
    assert isinstance(step, Batch)
    assert _seqs(step) == [1]  # stops before the file's event
    window.sent_through(step.end, 0.0)
    assert window.next_step() == window.events[1]  # its file goes first
    window.file_done(SHA)
    step = window.next_step()
    assert isinstance(step, Batch)
    assert _seqs(step) == [2, 3]


def test_an_event_whose_file_is_refused_is_sent_as_a_gap() -> None:
    ref = protocol.FileRef(sha256=SHA, size=100, name="a.png")
    window = _window()
    blocked = _entry(1, file=ref)
    window.push(blocked)
    window.push(_entry(2))
    assert window.next_step() == blocked
    gap = Entry(1, 1, b"gap", None)
    window.replace(blocked, gap)
    assert window.find(1) == gap
    step = window.next_step()
    assert isinstance(step, Batch)
    assert step.bodies == [b"gap", window.events[1].body]
    _check_window(window)


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 30)),
        st.tuples(st.just("read"), st.integers(1, 60)),
        st.tuples(st.just("send"), st.integers(0, 0)),
        st.tuples(st.just("ack"), st.integers(0, 80)),
        st.tuples(st.just("nack"), st.integers(0, 80)),
        st.tuples(st.just("wait"), st.integers(0, 3)),
        st.tuples(st.just("pause"), st.integers(0, 5)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, sizes=st.integers(5, 400))
@pytest.mark.slow
def test_any_sequence_of_inputs_keeps_the_window_bounded_and_in_order(
    ops: list[tuple[str, int]], sizes: int
) -> None:
    window = _window(max_events=12, max_bytes=2000, batch_events=5, batch_bytes=900)
    written = 0
    now = 0.0
    acked = 0
    for op, n in ops:
        if op == "write":
            written += n
        elif op == "read":
            _read(window, written, size=sizes)
        elif op == "send":
            step = window.next_step()
            if isinstance(step, Batch):
                first = window.sent
                assert 1 <= len(step.bodies) <= window.batch_events
                assert len(step.bodies) == 1 or sum(map(len, step.bodies)) <= window.batch_bytes
                assert step.bodies == [e.body for e in list(window.events)[first : step.end]]
                assert window.sent_through(step.end, now) == step.end - first
        elif op == "ack":
            position = min(n, written)  # the stream never acks beyond what was written
            reread = window.ack(position, now)
            assert (reread is None) == (position <= acked)
            acked = max(acked, position)
        elif op == "nack":
            window.nack(n, now)
        elif op == "wait":
            now += n
            window.check_silence(now)
        else:
            window.pause(now + n)
        assert window.acked == acked  # monotonic: out-of-order acks never move it back
        _check_window(window)


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 60),
    losses=st.lists(st.booleans(), max_size=120),
    ack_losses=st.lists(st.booleans(), max_size=60),
)
def test_every_event_reaches_a_collector_over_a_lossy_network_exactly_in_order(
    total: int, losses: list[bool], ack_losses: list[bool]
) -> None:
    """Lost Submits and lost Acks are made good by Nacks and resends after silence."""
    window = _window(max_events=7, batch_events=3)
    drops = collections.deque(losses)
    ack_drops = collections.deque(ack_losses)
    have = 0  # the collector's journal: every seq up to here, in order
    received: list[int] = []
    now = 0.0
    for _ in range(5000):
        if window.acked == total:
            break
        _read(window, total)
        while isinstance(step := window.next_step(), Batch):
            window.sent_through(step.end, now)
            if drops and drops.popleft():
                continue  # the Submit is lost
            for seq in _seqs(step):
                if seq == have + 1:
                    have = seq
                    received.append(seq)
                elif seq > have + 1:
                    window.nack(have + 1, now)
            if not (ack_drops and ack_drops.popleft()):
                window.ack(have, now)
        now += 0.5
        window.check_silence(now)
        _check_window(window)
    assert window.acked == total
    assert received == list(range(1, total + 1))


# ---------------------------------------------------------------------------- transfers


def _transfer(size: int, credit: int = 3) -> FileTransfer:
    return FileTransfer(7, protocol.FileRef(sha256=SHA, size=size, name="best.pt"), now=0.0, credit=credit)


def _send_all(t: FileTransfer, chunk: int, now: float = 0.0) -> list[int]:
    offsets = []
    while (offset := t.next_chunk()) is not None:
        offsets.append(offset)
        t.chunk_sent(min(chunk, t.ref.size - offset), now)
    return offsets


def test_a_file_is_offered_first_and_chunks_wait_for_the_answer() -> None:
    t = _transfer(100)
    assert t.offer_due()
    assert t.next_chunk() is None
    t.offer_sent(now=1.0)
    assert not t.offer_due()
    assert t.next_chunk() is None  # no answer yet
    assert t.waiting()
    assert t.on_status(40, complete=False, error="", now=1.5) is StatusOutcome.OFFER_ANSWERED
    assert _send_all(t, 10) == [40, 50, 60]  # resumes where the collector is, credit 3


def test_the_chunks_in_flight_never_exceed_the_credit() -> None:
    t = _transfer(1000, credit=3)
    t.offer_sent(0.0)
    t.on_status(0, complete=False, error="", now=0.0)
    assert _send_all(t, 100) == [0, 100, 200]
    assert t.on_status(100, complete=False, error="", now=0.1) is StatusOutcome.ACCEPTED
    assert _send_all(t, 100) == [300]  # one answer, one more chunk
    assert len(t.inflight) == 3


def test_an_answer_that_does_not_match_resumes_where_the_collector_is() -> None:
    t = _transfer(1000, credit=4)
    t.offer_sent(0.0)
    t.on_status(0, complete=False, error="", now=0.0)
    _send_all(t, 100)  # 0, 100, 200, 300
    assert t.on_status(0, complete=False, error="", now=0.1) is StatusOutcome.RESUMED  # chunk 0 lost
    assert t.next_offset == 0
    assert t.stale == 3
    assert _send_all(t, 100) == [0]  # the three answers still due hold three of the four credits
    for _ in range(3):
        assert t.on_status(0, complete=False, error="", now=0.2) is StatusOutcome.STALE
    assert t.on_status(100, complete=False, error="", now=0.3) is StatusOutcome.ACCEPTED
    assert _send_all(t, 100) == [100, 200, 300, 400]


def test_a_rejected_file_is_sent_again_from_where_the_collector_is() -> None:
    t = _transfer(300, credit=2)
    t.offer_sent(0.0)
    t.on_status(0, complete=False, error="", now=0.0)
    _send_all(t, 100)
    assert t.on_status(0, complete=False, error="sha256 mismatch", now=0.1) is StatusOutcome.REJECTED
    assert (t.next_offset, t.stale, list(t.inflight)) == (0, 1, [])
    assert t.on_status(0, complete=False, error="", now=0.2) is StatusOutcome.STALE
    assert _send_all(t, 100) == [0, 100]


def test_a_complete_answer_ends_the_transfer_whatever_was_in_flight() -> None:
    t = _transfer(300)
    t.offer_sent(0.0)
    assert t.on_status(300, complete=True, error="", now=0.0) is StatusOutcome.COMPLETE


def test_an_answer_with_no_offer_out_is_ignored() -> None:
    t = _transfer(300)
    assert t.on_status(100, complete=False, error="", now=0.0) is StatusOutcome.IGNORED
    assert t.offer_due()
    assert t.next_offset == 0


def test_silence_offers_the_file_again_and_the_answer_resumes_it_after_a_reconnect() -> None:
    t = _transfer(1000, credit=3)
    t.offer_sent(now=0.0)
    t.on_status(0, complete=False, error="", now=0.0)
    _send_all(t, 100, now=1.0)
    assert not t.check_silence(now=2.9)
    assert t.check_silence(now=3.1)  # no answers: the connection may be gone
    assert t.offer_due()
    assert (t.next_offset, t.stale, list(t.inflight)) == (0, 0, [])
    t.offer_sent(now=3.2)
    assert t.on_status(200, complete=False, error="", now=3.3) is StatusOutcome.OFFER_ANSWERED
    assert _send_all(t, 100) == [200, 300, 400]


def test_silence_without_answers_due_is_no_reason_to_offer_again() -> None:
    t = _transfer(100)
    assert not t.check_silence(now=100.0)  # the offer was never sent (the socket was full)
    t.offer_sent(0.0)
    t.on_status(0, complete=False, error="", now=0.0)
    assert not t.check_silence(now=100.0)  # answered, nothing in flight


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 400),
    had=st.integers(0, 400),
    credit=st.integers(1, 6),
    losses=st.lists(st.booleans(), max_size=80),
    errors=st.lists(st.booleans(), max_size=20),
)
@pytest.mark.slow
def test_a_file_reaches_a_collector_over_a_lossy_network_and_the_credit_always_holds(
    size: int, had: int, credit: int, losses: list[bool], errors: list[bool]
) -> None:
    chunk = 16
    t = FileTransfer(1, protocol.FileRef(sha256=SHA, size=size, name="f"), now=0.0, credit=credit)
    have = min(had, size)  # the collector may hold part of it already (an earlier connection)
    drops = collections.deque(losses)
    rejections = collections.deque(errors)
    to_collector: collections.deque[tuple[str, int, int]] = collections.deque()
    now = 0.0
    done = False
    for _ in range(5000):
        if t.offer_due():
            t.offer_sent(now)
            to_collector.append(("offer", 0, 0))
        while (offset := t.next_chunk()) is not None:
            length = min(chunk, size - offset)
            t.chunk_sent(length, now)
            to_collector.append(("chunk", offset, length))
            assert len(t.inflight) + t.stale <= credit
        answers = []
        while to_collector:
            kind, offset, length = to_collector.popleft()
            if drops and drops.popleft():
                continue  # lost on the way
            error = ""
            if kind == "chunk" and offset == have:
                if rejections and rejections.popleft():
                    have, error = 0, "sha256 mismatch"  # the collector starts the file over
                else:
                    have += length
            answers.append((have, have == size, error))
        for answer_have, complete, error in answers:
            if drops and drops.popleft():
                continue
            if t.on_status(answer_have, complete=complete, error=error, now=now) is StatusOutcome.COMPLETE:
                done = True
                break
            assert len(t.inflight) + t.stale <= credit
            assert list(t.inflight) == sorted(set(t.inflight))
            assert all(0 < end <= size for end in t.inflight)
            assert 0 <= t.next_offset <= size
        if done:
            break
        now += 1.0
        t.check_silence(now)
    assert done
    assert have == size


# --------------------------------------------------------------------------- held files


def _held(tmp_path: Path) -> HeldFiles:
    config = ProducerConfig.from_env(endpoint="tcp://127.0.0.1:1", spool_dir=tmp_path, flush_timeout=10)
    return HeldFiles(config, Tally())


def _handoff(state: RunState, event: protocol.Event) -> Handoff:
    return Handoff(state, event, "/x.png" if not isinstance(event, protocol.RunClose) else None)


def test_held_files_are_tried_again_on_a_schedule_that_backs_off(tmp_path: Path) -> None:
    held = _held(tmp_path)
    state = RunState("r", owned=True)
    image = protocol.DebugImage(run="r", seq=1, title="t", series="s", iteration=0, file=None)
    held.hold(_handoff(state, image), now=0.0)
    assert held
    assert not held.due(HOLD_RETRY_MIN - 0.01)
    assert held.due(HOLD_RETRY_MIN)
    delays = []
    now = HOLD_RETRY_MIN
    for _ in range(8):
        items = held.take()
        assert [item.event for item in items] == [image]
        assert not state.held
        held.hold(items[0], now)  # still no room
        held.retried(now)
        start = now
        while not held.due(now):
            now += 0.05
        delays.append(round(now - start, 1))
    assert delays == sorted(delays)
    assert delays[-1] == HOLD_RETRY_MAX
    assert state.held_deadline == float("inf")  # no deadline before the run ends


def test_a_held_close_sets_the_deadline_and_tries_again_soon(tmp_path: Path) -> None:
    held = _held(tmp_path)
    state = RunState("r", owned=True)
    image = protocol.DebugImage(run="r", seq=1, title="t", series="s", iteration=0, file=None)
    close = protocol.RunClose(run="r", seq=1)
    held.hold(_handoff(state, image), now=0.0)
    held.take()
    held.hold(_handoff(state, image), now=0.0)
    held.retried(0.0)  # backed off
    held.hold(_handoff(state, close), now=1.0)
    assert state.held_deadline == pytest.approx(1.0 + 10 / 2)
    assert held.due(1.0 + HOLD_RETRY_MIN)
    assert [item.event for item in held.take()] == [image, close]  # in order
    held.retried(2.0)
    assert not held
    held.hold(_handoff(state, image), now=2.0)
    held.give_up()
    assert state.held_deadline == float("-inf")
