"""The bounded queues between pipeline stages, and the ring of reusable host buffers.

Every blocking call waits on a condition with a timeout; `abort()` wakes every waiter at once, so
no stage ever polls with sleeps.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from unweather.errors import UnweatherError


class _EndOfStream:
    def __repr__(self) -> str:
        return "EOS"


EOS: Any = _EndOfStream()  # the sentinel a stage passes on when its input has ended

# The causes of live drops: the machine fell behind the source, or the run (or a reconnection) was starting.
OVERLOAD = "overload"
STARTUP = "startup"


class Aborted(Exception):
    """The queue was aborted: the pipeline is stopping because of an error elsewhere."""


class StallError(UnweatherError):
    """A stage waited longer than the stall timeout."""


class FrameQueue:
    """A bounded FIFO between two stages.

    Args:
        name: for statistics and errors.
        capacity: items it holds.
        drop_oldest: when full, `put` discards the oldest waiting item (live mode) instead of waiting.
        on_drop: called with each discarded item (to release its buffers).

    A dropping queue can be held for a while (`hold`, a live run starting): it then keeps more items,
    or waits for room, and `release` makes it drop at `capacity` again. Drops are counted by cause.
    """

    def __init__(self, name: str, capacity: int, drop_oldest: bool = False,
                 on_drop: Callable[[Any], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.name = name
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self.on_drop = on_drop
        self.dropped = 0
        # Drops by cause: `overload` unless a `hold` names another.
        self.drops: dict[str, int] = {}
        self._keep = capacity
        self._dropping = drop_oldest
        self._cause = OVERLOAD
        self.max_depth = 0
        self._depth_sum = 0
        self._puts = 0
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._aborted = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def mean_depth(self) -> float:
        """Mean number of items waiting, sampled at each put."""
        return self._depth_sum / self._puts if self._puts else 0.0

    def put(self, item: Any, timeout: float) -> None:
        """Append `item`, waiting up to `timeout` seconds for room (or dropping the oldest).

        Raises:
            Aborted: the queue was aborted.
            StallError: no room within `timeout`.
        """
        with self._cond:
            if self._aborted:
                raise Aborted(self.name)
            deadline = time.monotonic() + timeout
            dropped = []
            while len(self._items) >= self._keep:
                if self._dropping:
                    dropped = self._drop_oldest(1, self._cause)
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StallError(f"the pipeline stalled: no room in the {self.name} queue for "
                                     f"{timeout:.0f} s.")
                self._cond.wait(left)
                if self._aborted:
                    raise Aborted(self.name)
            self._items.append(item)
            self._puts += 1
            self._depth_sum += len(self._items)
            self.max_depth = max(self.max_depth, len(self._items))
            self._cond.notify_all()
        self._discard(dropped)

    def hold(self, limit: int | None, cause: str) -> None:
        """Stop dropping at `capacity` for now (a live run starting).

        Args:
            limit: keep up to this many items, then drop the oldest, counted under `cause`; None: wait
                for room instead, as a queue that never drops (the queue before then keeps the backlog).
            cause: what drops while held are counted as.
        """
        with self._cond:
            self._keep = self.capacity if limit is None else max(limit, self.capacity)
            self._dropping = self.drop_oldest and limit is not None
            self._cause = cause
            self._cond.notify_all()

    def release(self, cause: str = OVERLOAD) -> int:
        """Drop at `capacity` again: the oldest items beyond it go now, counted under `cause`, as later drops are.

        Returns:
            How many items were dropped now.
        """
        with self._cond:
            self._keep, self._dropping, self._cause = self.capacity, self.drop_oldest, cause
            dropped = self._drop_oldest(len(self._items) - self.capacity, cause) if self.drop_oldest else []
            # A producer waiting for room while held may now drop instead.
            self._cond.notify_all()
        self._discard(dropped)
        return len(dropped)

    def _drop_oldest(self, count: int, cause: str) -> list[Any]:
        """Remove the `count` oldest frames (never the end-of-stream marker); the lock is held."""
        dropped: list[Any] = []
        kept: collections.deque[Any] = collections.deque()
        for old in self._items:
            (dropped if len(dropped) < count and old is not EOS else kept).append(old)
        self._items = kept
        self.dropped += len(dropped)
        if dropped:
            self.drops[cause] = self.drops.get(cause, 0) + len(dropped)
        return dropped

    def _discard(self, dropped: list[Any]) -> None:
        if self.on_drop is not None:
            for old in dropped:
                self.on_drop(old)

    def put_eos(self) -> None:
        """Append the end-of-stream marker, whatever the capacity (it never blocks)."""
        with self._cond:
            self._items.append(EOS)
            self._cond.notify_all()

    def get(self, timeout: float) -> Any:
        """Remove and return the oldest item (possibly `EOS`), waiting up to `timeout` seconds.

        Raises:
            Aborted: the queue was aborted.
            StallError: nothing came within `timeout`.
        """
        with self._cond:
            deadline = time.monotonic() + timeout
            while not self._items and not self._aborted:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StallError(f"the pipeline stalled: nothing reached the {self.name} queue for "
                                     f"{timeout:.0f} s.")
                self._cond.wait(left)
            if self._aborted:
                raise Aborted(self.name)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def abort(self) -> list[Any]:
        """Wake every waiter with `Aborted`; return the items still waiting (to release them)."""
        with self._cond:
            self._aborted = True
            items = [i for i in self._items if i is not EOS]
            self._items.clear()
            self._cond.notify_all()
        return items


class BufferRing:
    """A fixed number of reusable buffers; `acquire` waits (with a timeout) until one is free.

    `make(key)` builds a buffer for a frame layout `key` (e.g. shapes); a free buffer made for another
    layout is rebuilt. On a GPU the buffers are pinned host memory, so they are made once and reused.
    """

    def __init__(self, name: str, size: int, make: Callable[[Any], Any]) -> None:
        self.name = name
        self.size = size
        self._make = make
        self._free: collections.deque[tuple[Any, Any]] = collections.deque()
        self._made = 0
        self._cond = threading.Condition()
        self._aborted = False

    def acquire(self, key: Any, timeout: float) -> Any:
        """A buffer for layout `key`.

        Raises:
            Aborted: the ring was aborted.
            StallError: none was released within `timeout`.
        """
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                if self._aborted:
                    raise Aborted(self.name)
                for i, (k, buf) in enumerate(self._free):
                    if k == key:
                        del self._free[i]
                        return buf
                if self._made < self.size:
                    self._made += 1
                    break
                if self._free:
                    self._free.popleft()  # a buffer of another layout: replace it
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StallError(f"the pipeline stalled: no free {self.name} buffer for {timeout:.0f} s.")
                self._cond.wait(left)
        return self._make(key)

    def release(self, key: Any, buf: Any) -> None:
        """Give a buffer back."""
        with self._cond:
            if self._made > self.size:
                self._made -= 1  # the ring was made smaller: this buffer goes
            else:
                self._free.append((key, buf))
            self._cond.notify_all()

    def resize(self, size: int) -> None:
        """Hold up to `size` buffers from now on; free ones beyond it go at once, the others when released."""
        with self._cond:
            self.size = max(1, size)
            while self._made > self.size and self._free:
                self._free.popleft()
                self._made -= 1
            self._cond.notify_all()

    def abort(self) -> None:
        """Wake every waiter with `Aborted`."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
