"""Group commit on its own (eventlet threads, no broker, no database): calls that queue behind a
busy writer go together, each caller gets its own answer, and a batch that fails is retried one call
at a time so that only the bad call fails."""
from types import SimpleNamespace

import eventlet
import pytest

from wuji_common.dependencies import GroupCommit


class Recorder(GroupCommit):
    """Writes by recording the batch; 'bad' fails the whole batch, 'refused' only its own call."""

    def __init__(self):
        self.batches = []
        self.in_flight = self.most_in_flight = 0

    def write_batch(self, items):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        eventlet.sleep(0.01)  # a transaction's round trips: others queue up meanwhile
        self.in_flight -= 1
        if "bad" in items:
            raise RuntimeError("the batch failed")
        self.batches.append(list(items))
        return [ValueError(item) if item == "refused" else item.upper() for item in items]


def writer(max_writers=1, max_batch=64):
    recorder = Recorder()
    recorder.container = SimpleNamespace(
        config={"GROUP_COMMIT_WRITERS": max_writers, "GROUP_COMMIT_MAX": max_batch},
        service_name="test", spawn_managed_thread=eventlet.spawn)
    recorder.setup()
    return recorder


def submit_all(recorder, items):
    """Submit the first item, and the others once its transaction is under way."""
    def call(item):
        try:
            return recorder.submit(item)
        except Exception as exc:   # what the caller sees
            return exc
    threads = [eventlet.spawn(call, items[0])]
    eventlet.sleep(0.001)
    threads += [eventlet.spawn(call, item) for item in items[1:]]
    return [t.wait() for t in threads]


def test_calls_queued_behind_a_busy_writer_share_a_transaction():
    recorder = writer(max_writers=1)
    results = submit_all(recorder, [f"a{n}" for n in range(10)])
    assert results == [f"A{n}" for n in range(10)]
    # the first call is written alone at once; the nine that queued meanwhile go together
    assert [len(b) for b in recorder.batches] == [1, 9]
    assert recorder._writers == 0


def test_a_batch_is_capped_and_writers_run_side_by_side():
    recorder = writer(max_writers=2, max_batch=4)
    submit_all(recorder, [f"a{n}" for n in range(12)])
    assert max(len(b) for b in recorder.batches) == 4
    assert sorted(i for b in recorder.batches for i in b) == sorted(f"a{n}" for n in range(12))
    assert recorder.most_in_flight == 2


def test_a_refused_call_fails_alone_and_a_failing_batch_is_retried_call_by_call():
    recorder = writer(max_writers=1)
    results = submit_all(recorder, ["first", "x", "refused", "bad", "y"])
    assert results[0] == "FIRST" and results[1] == "X" and results[4] == "Y"
    assert isinstance(results[2], ValueError)
    assert isinstance(results[3], RuntimeError)
    # the batch with 'bad' was written again one by one: x, refused and y each alone
    assert recorder.batches[1:] == [["x"], ["refused"], ["y"]]


def test_a_lone_call_is_written_at_once():
    recorder = writer()
    started = eventlet.hubs.get_hub().clock()
    assert recorder.submit("only") == "ONLY"
    assert recorder.batches == [["only"]]
    assert eventlet.hubs.get_hub().clock() - started < 1.0


@pytest.mark.parametrize("max_writers", [1, 2])
def test_calls_arriving_while_writers_finish_are_not_left_behind(max_writers):
    recorder = writer(max_writers=max_writers, max_batch=3)
    first = submit_all(recorder, [f"a{n}" for n in range(7)])
    second = submit_all(recorder, [f"b{n}" for n in range(5)])
    assert first == [f"A{n}" for n in range(7)] and second == [f"B{n}" for n in range(5)]
    assert recorder._writers == 0
