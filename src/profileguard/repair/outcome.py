"""What a pass of the worker did, and what one repair transaction reported."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PassResult:
    """What one pass (or a retry) did."""

    scanned: int = 0
    repaired: int = 0
    failed: int = 0
    quarantined: int = 0
    waiting: int = 0
    batches: int = 0
    duration: float = 0.0

    def add(self, other: BatchOutcome) -> None:
        self.scanned += other.scanned
        self.repaired += other.repaired
        self.failed += other.failed
        self.quarantined += other.quarantined
        self.waiting += other.waiting
        self.batches += 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, part: PassResult) -> None:
        """Add the counts of another pass (or part of one)."""
        self.scanned += part.scanned
        self.repaired += part.repaired
        self.failed += part.failed
        self.quarantined += part.quarantined
        self.waiting += part.waiting
        self.batches += part.batches


@dataclass
class BatchOutcome:
    """One repair transaction: candidates, what was claimed, and what the engine reported."""

    scanned: int = 0
    claimed: int = 0
    repaired: int = 0
    failed: int = 0
    quarantined: int = 0
    waiting: int = 0
    deferred: int = 0
    systemic: list[dict[str, Any]] = field(default_factory=list)

    def take(self, report: dict[str, Any]) -> None:
        """Add what one `profileguard.repair()` call reported."""
        self.repaired += int(report.get("created") or 0)
        self.failed += int(report.get("failed") or 0)
        self.quarantined += int(report.get("quarantined") or 0)
        self.waiting += int(report.get("waiting") or 0)
        self.deferred += int(report.get("deferred") or 0)
        self.systemic.extend(report.get("systemic") or [])
