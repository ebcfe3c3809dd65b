"""Batches placed on the devices ahead of the step that reads them.

jax dispatches a step asynchronously, so while step k runs the host can read batch k+1 from
the pipeline and start its transfer; with ``depth`` 2 the next batch is already on the devices
when step k+1 is dispatched (flax's ``prefetch_to_device`` pattern, without a thread).

Exact resume needs the data position *after* the batch just trained on, not the pipeline's
current position (which is ``depth`` batches ahead): each prefetched batch carries the
iterator state taken right after it was read.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterator


class DevicePrefetcher:
    """Iterator of ``(device batch, data state after it)`` over a host-batch iterator with
    ``get_state()``. ``place`` turns a host batch into global device arrays (``to_global``);
    ``limit``: read at most this many batches (the steps left), so a run reads no batch it
    will not train on. ``before_read(i)`` is called before the i-th read (from 0)."""

    def __init__(self, host_iter: Iterator, place: Callable, depth: int = 2, limit: int | None = None,
                 before_read: Callable[[int], None] | None = None):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.host_iter, self.place, self.depth, self.left = host_iter, place, depth, limit
        self.before_read, self.read = before_read, 0
        self._queue: collections.deque = collections.deque()

    def _fill(self, n: int):
        while len(self._queue) < n and self.left != 0:
            if self.before_read is not None:  # e.g. a ratio schedule's rows for the batch read next
                self.before_read(self.read)
            self.read += 1
            try:
                host = next(self.host_iter)
            except StopIteration:
                self.left = 0
                break
            self._queue.append((self.place(host), self.host_iter.get_state()))
            if self.left is not None:
                self.left -= 1

    def peek(self):
        """The next batch without consuming it (compiling the step needs its shapes)."""
        self._fill(1)
        if not self._queue:
            raise StopIteration
        return self._queue[0][0]

    def __iter__(self):
        return self

    def __next__(self):
        self._fill(self.depth)
        if not self._queue:
            raise StopIteration
        return self._queue.popleft()
