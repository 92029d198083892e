"""Run GIL-free numba kernels over pieces of work on a few Python threads.

The kernels are ``@njit(nogil=True)`` and serial; parallelism comes from calling them on
disjoint pieces of work from a thread pool. That keeps numba's compile time low (no parfor
pipeline), avoids a second OpenMP runtime spinning against PyTorch's on small machines, and
makes results independent of the thread count: every piece writes its own outputs.

The number of threads follows ``torch.get_num_threads()``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["num_threads", "run_ranges", "run_chunks"]

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def num_threads() -> int:
    """Threads the renderer uses: ``torch.get_num_threads()``."""
    return max(1, int(torch.get_num_threads()))


def _executor(n: int) -> ThreadPoolExecutor:
    """The shared pool, grown when more threads are asked for (never shrunk: idle is free)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="posegs-render")
            _pool_size = n
        return _pool


def _run(calls: list[Callable[[], Any]]) -> None:
    """Run ``calls`` on ``num_threads()`` threads (the caller's included), each thread taking
    the next call when it is free."""
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
            future.result()  # waits for all, re-raises a kernel's exception


def run_ranges(kernel: Callable[..., Any], n_items: int, *args: Any, min_items: int = 1024) -> None:
    """``kernel(start, stop, *args)`` over contiguous ranges covering ``0 .. n_items - 1``."""
    pieces = max(1, min(num_threads(), n_items // max(1, min_items)))
    bounds = np.linspace(0, n_items, pieces + 1).astype(np.int64)
    _run([lambda a=int(a), b=int(b): kernel(a, b, *args) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])


def run_chunks(kernel: Callable[..., Any], items: np.ndarray, costs: np.ndarray, *args: Any) -> None:
    """``kernel(chunk, *args)`` over chunks of ``items`` with similar total ``costs``.

    Items are dealt round-robin in decreasing cost into ``4 x threads`` chunks, which the
    threads pick up as they become free.
    """
    n = num_threads()
    n_chunks = 1 if n == 1 else min(len(items), 4 * n)
    if n_chunks <= 1:
        kernel(items, *args)
        return
    order = items[np.argsort(-costs, kind="stable")]
    _run([lambda c=np.ascontiguousarray(order[k::n_chunks]): kernel(c, *args) for k in range(n_chunks)])
