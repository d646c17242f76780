"""A dynamic batcher (as Triton's): concurrent requests are joined into one engine call.

Each request is a tuple of arrays sharing a first (batch) axis. One worker thread takes the oldest request, then adds
queued requests until the batch holds ``max_batch`` rows or ``max_delay_s`` has passed since that oldest request
arrived (Triton's ``max_queue_delay_microseconds``), runs the function once on the concatenation and hands each
request its rows of every output. A request that would overflow the batch waits for the next one. The queue is
bounded: past ``max_queue`` waiting requests :meth:`DynamicBatcher.submit` raises :class:`QueueFullError` (the server
answers 503). ``max_batch = 1`` is one-at-a-time serving.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_DELAY_S = 60.0  # longest batching delay accepted: longer ones only park requests (and inf breaks Condition.wait)


class QueueFullError(RuntimeError):
    """The batcher's queue holds ``max_queue`` requests already."""


@dataclass
class _Item:
    arrays: tuple[np.ndarray, ...]
    future: Future
    arrived: float

    @property
    def rows(self) -> int:
        return int(self.arrays[0].shape[0])


@dataclass
class BatcherStats:
    """Counters since start: requests, rows and batches run, rows per batch, engine seconds, failures."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    engine_seconds: float = 0.0
    failed_batches: int = 0
    rejected: int = 0
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The counters as ``GET /stats`` answers them: seconds to the microsecond (as every timing in the JSON the
        server answers), ratios to 3 decimals."""
        return {"requests": self.requests, "rows": self.rows, "batches": self.batches,
                "mean_batch": round(self.rows / self.batches, 3) if self.batches else 0.0,
                "largest_batch": self.largest_batch, "engine_seconds": round(self.engine_seconds, 6),
                "rows_per_engine_second": round(self.rows / self.engine_seconds, 3) if self.engine_seconds > 0 else 0.0,
                "failed_batches": self.failed_batches, "rejected": self.rejected,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


class DynamicBatcher:
    """Batch calls of ``fn(*arrays) -> array | tuple of arrays`` across threads (see the module docstring).

    ``fn`` runs on the batcher's own thread only. Use :meth:`submit` (returns a ``concurrent.futures.Future`` of the
    request's outputs, a tuple when ``fn`` returns one) and :meth:`close` (fails what is still queued).
    """

    def __init__(self, fn: Callable[..., Any], max_batch: int, max_delay_s: float, max_queue: int = 1024,
                 name: str = "batcher") -> None:
        if max_batch < 1 or not 0 <= max_delay_s <= MAX_DELAY_S or max_queue < 1:  # NaN fails the range too
            raise ValueError(f"need max_batch >= 1, 0 <= max_delay_s <= {MAX_DELAY_S:g}, max_queue >= 1; got "
                             f"{max_batch}, {max_delay_s}, {max_queue}")
        self.fn, self.max_batch, self.max_delay_s, self.max_queue = fn, int(max_batch), float(max_delay_s), max_queue
        self.stats = BatcherStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive() and not self._closed

    def reset_stats(self) -> None:
        """Start :attr:`stats` afresh (the server's warm-up is no client's request); call it with no request in
        flight: a batch running meanwhile would count into the new counters."""
        with self._cond:
            self.stats = BatcherStats()

    def queued(self) -> int:
        """Requests waiting now."""
        with self._cond:
            return len(self._queue)

    def submit(self, *arrays: np.ndarray) -> Future:
        """Queue one request (arrays with the same number of rows, 1 to ``max_batch``); returns its future.

        Raises ``ValueError`` for an empty or oversized request, :class:`QueueFullError` when the queue is full,
        ``RuntimeError`` after :meth:`close`.
        """
        rows = {int(a.shape[0]) for a in arrays}
        if len(rows) != 1 or not 1 <= next(iter(rows)) <= self.max_batch:
            raise ValueError(f"a request needs 1 to {self.max_batch} rows in every array, got {sorted(rows)}")
        item = _Item(tuple(arrays), Future(), time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._queue) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFullError(f"{len(self._queue)} requests are queued already (limit {self.max_queue})")
            self._queue.append(item)
            self.stats.requests += 1
            self._cond.notify()
        return item.future

    def _take(self) -> list[_Item] | None:
        """Wait for the oldest request, then gather more until the batch is full or its delay has passed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._queue.popleft()
            if not first.future.set_running_or_notify_cancel():
                return []  # its caller went away
            batch, rows = [first], first.rows
            deadline = first.arrived + self.max_delay_s
            while rows < self.max_batch:
                if not self._queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._cond.wait(remaining)
                    continue
                if rows + self._queue[0].rows > self.max_batch:
                    break  # it waits for the next batch
                nxt = self._queue.popleft()
                if nxt.future.set_running_or_notify_cancel():  # a future that runs can no longer be cancelled
                    batch.append(nxt)
                    rows += nxt.rows
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _run(self, batch: Sequence[_Item]) -> None:
        rows = [it.rows for it in batch]
        t0 = time.perf_counter()
        try:  # joining too: requests whose arrays do not stack fail their own futures, never the worker
            joined = tuple(np.concatenate([it.arrays[k] for it in batch]) if len(batch) > 1 else batch[0].arrays[k]
                           for k in range(len(batch[0].arrays)))
            result = self.fn(*joined)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            self.stats.failed_batches += 1
            for it in batch:
                it.future.set_exception(exc)
            return
        finally:
            self.stats.engine_seconds += time.perf_counter() - t0
        total = sum(rows)
        self.stats.batches += 1
        self.stats.rows += total
        self.stats.largest_batch = max(self.stats.largest_batch, total)
        self.stats.batch_sizes[total] = self.stats.batch_sizes.get(total, 0) + 1
        outs = result if isinstance(result, tuple) else (result,)
        start = 0
        for it, n in zip(batch, rows, strict=True):
            part = tuple(o[start:start + n] for o in outs)
            it.future.set_result(part if isinstance(result, tuple) else part[0])
            start += n

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (after the batch it runs) and fail the requests still queued."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for it in pending:
            if it.future.set_running_or_notify_cancel():
                it.future.set_exception(RuntimeError("the server is shutting down"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
