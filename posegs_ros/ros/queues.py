"""Thread-safe pieces between the executor's callbacks and the worker thread (ROS-free).

- :class:`DropOldestQueue`: the bounded input queue; a full queue drops its *oldest* item, so
  the worker always gets the newest images when it cannot keep up.
- :class:`ThrottledCounter`: counts events by reason and decides when a log line is due, so
  a stream of bad images gives one line per reason and period, not one per image.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

__all__ = ["DropOldestQueue", "ThrottledCounter"]

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """A FIFO of at most ``maxsize`` items; :meth:`put` on a full queue evicts the oldest item."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._wakeups = 0
        self.dropped = 0  # items evicted since creation

    def put(self, item: T) -> T | None:
        """Append ``item``; returns the evicted oldest item when the queue was full, else ``None``.

        Never blocks (safe in executor callbacks). Items put after :meth:`close` are ignored.
        """
        with self._cond:
            if self._closed:
                return None
            evicted = None
            if len(self._items) >= self.maxsize:
                evicted = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            return evicted

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout`` seconds; ``None`` on timeout, :meth:`wake` or close."""
        with self._cond:
            self._wait(timeout)
            return self._items.popleft() if self._items else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` s) until an item is queued, without taking it; also returns on
        :meth:`wake` or close. True if an item is there."""
        with self._cond:
            self._wait(timeout)
            return bool(self._items)

    def _wait(self, timeout: float | None) -> None:
        wakeups = self._wakeups
        self._cond.wait_for(lambda: self._items or self._closed or self._wakeups != wakeups, timeout=timeout)

    def wake(self) -> None:
        """Make a waiting :meth:`get` return now (e.g. a command is pending)."""
        with self._cond:
            self._wakeups += 1
            self._cond.notify_all()

    def clear(self) -> int:
        """Discard all queued items (not counted as dropped); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n

    def close(self) -> None:
        """Refuse new items and wake every waiter."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass
class _ReasonState:
    count: int = 0
    last_logged: float | None = None
    suppressed: int = 0


class ThrottledCounter:
    """Counts events per reason; :meth:`record` returns a log line at most once per ``period_s`` per reason.

    The line after a quiet period says how many events of that reason were not logged.
    ``clock`` is injectable for tests (default :func:`time.monotonic`).
    """

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = float(period_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._reasons: dict[str, _ReasonState] = {}

    def record(self, reason: str, detail: str) -> str | None:
        """Count one ``reason`` event; the text to log now, or ``None`` when throttled."""
        now = self._clock()
        with self._lock:
            state = self._reasons.setdefault(reason, _ReasonState())
            state.count += 1
            if state.last_logged is not None and now - state.last_logged < self.period_s:
                state.suppressed += 1
                return None
            suffix = ""
            if state.suppressed:
                suffix = f" [{state.suppressed} more '{reason}' since the last message]"
            state.last_logged = now
            state.suppressed = 0
            return f"{detail}{suffix}"

    def counts(self) -> dict[str, int]:
        """``{reason: count}`` in first-seen order."""
        with self._lock:
            return {reason: state.count for reason, state in self._reasons.items()}

    def total(self) -> int:
        with self._lock:
            return sum(state.count for state in self._reasons.values())
