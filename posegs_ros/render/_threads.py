"""Run GIL-free numba kernels on a few Python threads.

The kernels are ``@njit(nogil=True)`` and serial; parallelism comes from running the same
kernel call on every thread of a small pool (the caller's thread included), the threads
taking work items one at a time through a shared atomic counter inside the kernel. That
keeps numba's compile time low (no parfor pipeline), avoids a second OpenMP runtime
spinning against PyTorch's on small machines, balances the load dynamically (a thread that
is slowed down or descheduled on a busy machine just takes fewer items) and makes results
independent of the thread count: every item writes its own outputs.

The number of threads follows ``torch.get_num_threads()`` unless the calling thread set its
own budget with :func:`thread_budget` (the engine's tracking and mapping threads each take a
share of the cores, so that together they do not oversubscribe them).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

__all__ = ["num_threads", "run_blocks", "run_calls", "run_shared", "set_thread_budget", "thread_budget"]

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_local = threading.local()  # .budget: this thread's renderer threads (None = torch's setting)


def num_threads() -> int:
    """Threads the renderer uses from the calling thread: its :func:`thread_budget`, else
    ``torch.get_num_threads()``."""
    budget = getattr(_local, "budget", None)
    return max(1, int(budget if budget is not None else torch.get_num_threads()))


def set_thread_budget(threads: int | None) -> None:
    """Renderer threads for calls made from the calling thread (``None``: follow torch)."""
    _local.budget = None if threads is None else max(1, int(threads))


@contextmanager
def thread_budget(threads: int | None) -> Iterator[None]:
    """Within the block, renders started by the calling thread use at most ``threads`` threads."""
    previous = getattr(_local, "budget", None)
    set_thread_budget(threads)
    try:
        yield
    finally:
        _local.budget = previous


def _executor(n: int) -> ThreadPoolExecutor:
    """The shared pool, grown when more threads are asked for (never shrunk: idle is free)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="posegs-render")
            _pool_size = n
        return _pool


def _run(calls: list[Callable[[], Any]]) -> None:
    """Run ``calls`` on up to ``num_threads()`` threads (the caller's included), each thread
    taking the next call when it is free."""
    n = min(num_threads(), len(calls))
    if n <= 1:
        for call in calls:
            call()
        return
    pending = iter(calls)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                call = next(pending, None)
            if call is None:
                return
            call()

    futures = [_executor(n - 1).submit(worker) for _ in range(n - 1)]
    try:
        worker()
    finally:
        for future in futures:
            # A helper that has not started yet is not waited for: the calls take their work
            # from shared counters, so the threads that did run have done all of it. On a busy
            # machine a helper can wait a whole scheduler time slice before it runs.
            if not future.cancel():
                future.result()  # waits for a running helper, re-raises a kernel's exception


def run_calls(calls: list[Callable[[], Any]]) -> None:
    """Run independent GIL-releasing ``calls`` (e.g. OpenCV filters, each writing its own
    output) on the renderer's threads, each thread taking the next call when it is free."""
    _run(calls)


def run_shared(kernel: Callable[..., Any], items: np.ndarray, *args: Any) -> None:
    """``kernel(items, counter, *args)`` on every thread (at most one per item): the kernel
    takes ``items`` one at a time, in order, through a shared atomic ``counter``, so a thread
    slowed down (or descheduled on a busy machine) just takes fewer of them."""
    counter = np.zeros(1, np.int64)
    n = max(1, min(num_threads(), len(items)))
    _run([lambda: kernel(items, counter, *args)] * n)


def run_blocks(kernel: Callable[..., Any], n_items: int, block: int, *args: Any) -> None:
    """``kernel(counter, n_items, block, *args)`` on every thread (at most one per block): the
    kernel takes blocks of ``block`` items one at a time through the shared atomic
    ``counter`` (see :func:`run_shared`)."""
    counter = np.zeros(1, np.int64)
    n = max(1, min(num_threads(), -(-n_items // block)))
    _run([lambda: kernel(counter, n_items, block, *args)] * n)
