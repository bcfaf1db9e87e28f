"""How much each batch takes: a batch size in rows that adapts toward a target duration (turned
into heap pages with the rows per page observed), pages per catch-up batch, halving on a
timeout, and the --max-rows-per-second throttle."""

from __future__ import annotations

import threading
import time

from profileguard.backfill.model import Batch, Options

# Never grow or shrink the batch size by more than this factor per batch.
ADAPT_FACTOR = 2.0


class Sizer:
    """The batch size of a run: rows per scan batch, rows per page, pages per catch-up batch."""

    def __init__(self, options: Options, size: int | None = None):
        self.options = options
        self.size = size or options.batch_size or 1000
        # Rows per heap page (observed) and pages per catch-up batch.
        self.per_page = 50.0
        self.catch_pages = 1

    def capped(self) -> int:
        """The batch size in rows, held to what the throttle lets through in target_seconds."""
        size = self.size
        if self.options.max_rows_per_second is not None:
            cap = int(self.options.max_rows_per_second * self.options.target_seconds)
            size = max(self.options.min_batch_size, min(size, cap))
        return size

    def pages(self, catchup: bool) -> int:
        """Heap pages the next batch takes."""
        if catchup:
            return self.catch_pages
        return max(1, round(self.capped() / self.per_page))

    def shrink(self) -> int:
        """A batch timed out: halve the batch size (not below --min-batch-size)."""
        self.size = max(self.options.min_batch_size, self.size // 2)
        return self.size

    def adapt(self, batch: Batch, pages: int, catchup: bool) -> None:
        """Move the pages per batch toward the target duration (rows per page as observed)."""
        options = self.options
        factor = options.target_seconds / max(batch.seconds, 1e-3)
        factor = min(ADAPT_FACTOR, max(1 / ADAPT_FACTOR, factor))
        if catchup:
            most = max(1, int(10 * options.max_batch_size / self.per_page))
            self.catch_pages = min(most, max(1, int(pages * factor)))
            return
        if batch.scanned <= 0 or batch.last - batch.first < pages:
            return
        self.per_page = max(1.0, batch.scanned / pages)
        self.size = min(
            options.max_batch_size, max(options.min_batch_size, int(batch.scanned * factor))
        )
        self.catch_pages = max(self.catch_pages, pages)


class Throttle:
    """Holds a run to --max-rows-per-second: after each batch, waits (interruptibly) for as long
    as the rows done so far are ahead of the rate. (The run's lease is renewed meanwhile by its
    heartbeat.)"""

    def __init__(self, rate: float | None, stop_event: threading.Event):
        self.rate = rate
        self.stop_event = stop_event
        self.rows = 0
        self.started = time.monotonic()

    def account(self, rows: int) -> None:
        if self.rate is None:
            return
        self.rows += rows
        ahead = self.rows / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            self.stop_event.wait(ahead)
