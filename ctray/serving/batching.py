"""Per-item error isolation for server-side batches, and batch-size counters.

``@serve.batch`` fails every request of a batch when the batch function raises.
The batch functions here never raise: :func:`run_isolated` retries a failed batch
item by item, so only the item that really fails gets an error (the same policy
as ``StageWorker`` in batch jobs).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from ctray.serving.schemas import BatchStats, ItemError

log = logging.getLogger("ray.serve")
T = TypeVar("T")
MAX_ERROR_CHARS = 300


@dataclass
class Outcome:
    """One item's result of a batch: a value or an item error, and the batch size."""

    value: Any = None
    error: ItemError | None = None
    batch_size: int | None = None


def error_from_exception(exc: BaseException, code: str = "model_error") -> ItemError:
    """An item error naming the exception (type and message, shortened)."""
    message = f"{type(exc).__name__}: {exc}"
    return ItemError(code=code, message=message[:MAX_ERROR_CHARS])


def run_isolated(fn: Callable[[list[T]], Sequence[Any]], items: list[T]) -> list[Outcome]:
    """``fn`` on the whole batch; if it raises, on each item alone.

    ``fn`` returns one value per item; a value that is an :class:`ItemError` marks
    that item as failed without failing the others."""
    size = len(items)
    try:
        values = list(fn(items))
        if len(values) != size:
            raise RuntimeError(f"batch function returned {len(values)} results for {size} items")
        return [_outcome(v, size) for v in values]
    except Exception:  # noqa: BLE001 - find the item that fails
        log.warning("batch of %d failed; retrying items one by one", size)
    out = []
    for item in items:
        try:
            out.append(_outcome(list(fn([item]))[0], 1))
        except Exception as exc:  # noqa: BLE001
            out.append(Outcome(error=error_from_exception(exc), batch_size=1))
    return out


def _outcome(value: Any, size: int) -> Outcome:
    if isinstance(value, ItemError):
        return Outcome(error=value, batch_size=size)
    return Outcome(value=value, batch_size=size)


class BatchCounter:
    """Counts of one replica since it started (served on ``/stats``)."""

    def __init__(self) -> None:
        self.requests = 0
        self.items = 0
        self.item_errors = 0
        self.sizes: Counter[int] = Counter()

    def record_request(self, n_items: int) -> None:
        """Count one request of ``n_items`` items."""
        self.requests += 1
        self.items += n_items

    def record_batch(self, outcomes: list[Outcome]) -> None:
        """Count one server-side batch and its item errors."""
        self.sizes[len(outcomes)] += 1
        self.item_errors += sum(o.error is not None for o in outcomes)

    def record_errors(self, n: int) -> None:
        """Count item errors that never reached a batch (blank texts)."""
        self.item_errors += n

    def snapshot(self, replica: str | None) -> BatchStats:
        """The counters as ``/stats`` returns them."""
        return BatchStats(replica=replica, requests=self.requests, items=self.items,
                          item_errors=self.item_errors, batches=sum(self.sizes.values()),
                          batch_sizes=dict(sorted(self.sizes.items())))
