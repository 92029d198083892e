"""The bounded input queue and the throttled skip counter (ROS-free)."""

from __future__ import annotations

import threading
import time

import pytest
from ros_support import FakeClock

from posegs_ros.ros.queues import DropOldestQueue, ThrottledCounter


def test_full_queue_drops_the_oldest_and_counts_it() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(2)
    assert queue.put(1) is None and queue.put(2) is None
    assert queue.put(3) == 1  # oldest evicted
    assert queue.put(4) == 2
    assert queue.dropped == 2 and len(queue) == 2
    assert [queue.get(0), queue.get(0), queue.get(0)] == [3, 4, None]


def test_get_times_out_wakes_and_closes() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(1)
    start = time.monotonic()
    assert queue.get(timeout=0.05) is None
    assert time.monotonic() - start >= 0.04
    threading.Timer(0.05, queue.wake).start()
    start = time.monotonic()
    assert queue.get(timeout=5.0) is None
    assert time.monotonic() - start < 2.0  # woken, not timed out
    queue.put(7)
    queue.close()
    assert queue.put(8) is None and queue.get(0) == 7  # closed: new items ignored, queued ones drain
    assert queue.get(timeout=5.0) is None  # closed and empty: returns at once
    assert queue.clear() == 0
    with pytest.raises(ValueError):
        DropOldestQueue(0)


def test_put_never_blocks_while_a_consumer_is_slow() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    taken: list[int] = []

    def consumer() -> None:
        while (item := queue.get(timeout=1.0)) is not None:
            taken.append(item)
            time.sleep(0.01)

    thread = threading.Thread(target=consumer)
    thread.start()
    start = time.monotonic()
    for i in range(500):
        queue.put(i)
    elapsed = time.monotonic() - start
    thread.join(5.0)
    assert elapsed < 0.5
    assert len(taken) + queue.dropped == 500
    assert taken == sorted(taken) and taken[-1] == 499  # FIFO, and the newest always survives


def test_throttled_counter_logs_once_per_period_and_reports_suppressed() -> None:
    clock = FakeClock()
    counter = ThrottledCounter(5.0, clock)
    assert counter.record("bad_image_data", "first") == "first"
    assert counter.record("bad_image_data", "second") is None
    assert counter.record("no_camera_info", "other reason") == "other reason"  # per reason
    clock.advance(4.9)
    assert counter.record("bad_image_data", "third") is None
    clock.advance(0.2)
    line = counter.record("bad_image_data", "fourth")
    assert line is not None and line.startswith("fourth") and "2 more 'bad_image_data'" in line
    assert counter.counts() == {"bad_image_data": 4, "no_camera_info": 1}
    assert counter.total() == 5
    clock.advance(10)
    assert counter.record("bad_image_data", "fifth") == "fifth"  # nothing suppressed since
