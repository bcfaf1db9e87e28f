"""What a backfill is told (Options), what it says while it runs (Progress) and at the end
(Report), and the errors it raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from profileguard.errors import ConfigError, ExitCode, ProfileGuardError

# Failed users listed in the report (all are recorded in the database).
FAILURE_LIST_LIMIT = 100


class BackfillBusyError(ProfileGuardError):
    """Another backfill holds the lock."""


class BackfillStoppedError(ProfileGuardError):
    """The run stopped on a fault that fails every user; its checkpoint is kept for --resume.

    `report` is the run as it stood when it stopped."""

    exit_code = ExitCode.BACKFILL_STOPPED

    def __init__(
        self, message: str, *, hint: str, sqlstate: str | None = None, report: Report | None = None
    ):
        super().__init__(message, hint=hint, sqlstate=sqlstate)
        self.report = report


@dataclass(frozen=True)
class Options:
    """How a backfill runs; `batch_size` None means the resumed run's last size (or 1,000)."""

    dry_run: bool = False
    resume: bool = False
    batch_size: int | None = None
    min_batch_size: int = 100
    max_batch_size: int = 100_000
    target_seconds: float = 0.5
    max_rows_per_second: float | None = None
    lock_timeout: float = 2.0
    statement_timeout: float = 30.0
    sample: int = 10
    # Connections inserting ranges at once (checkpoints go on one more, the heartbeat on
    # another). Two by default: one connection reaches ~0.8x the rows/s of a single bulk
    # statement (each new row probes the growing profile table's username index, which a
    # statement over an empty table does not), two reach it; --workers 1 is the lightest on the
    # database.
    workers: int = 2

    def check(self) -> None:
        """Raise ConfigError on values that cannot work."""
        problems = []
        if self.min_batch_size < 1:
            problems.append("--min-batch-size must be at least 1")
        if self.max_batch_size < self.min_batch_size:
            problems.append("--max-batch-size must be at least --min-batch-size")
        if self.batch_size is not None and not (
            self.min_batch_size <= self.batch_size <= self.max_batch_size
        ):
            problems.append("--batch-size must be between --min-batch-size and --max-batch-size")
        if self.target_seconds <= 0:
            problems.append("--target-seconds must be positive")
        if self.max_rows_per_second is not None and self.max_rows_per_second <= 0:
            problems.append("--max-rows-per-second must be positive")
        if self.lock_timeout <= 0 or self.statement_timeout <= 0:
            problems.append("--lock-timeout and --statement-timeout must be positive")
        if self.sample < 0:
            problems.append("--sample must be 0 or more")
        if not 1 <= self.workers <= 16:
            problems.append("--workers must be between 1 and 16")
        if problems:
            raise ConfigError("; ".join(problems), hint="fix the option and run the command again")


@dataclass
class Progress:
    """A snapshot of a run, passed to the progress callback after every batch."""

    run_id: int
    dry_run: bool
    scanned: int
    created: int
    failed: int
    quarantined: int
    batches: int
    batch_size: int
    total_estimate: int
    elapsed: float
    rows_per_second: float


@dataclass(frozen=True)
class Failure:
    """One user whose own data the profile table rejected, and why (as the engine recorded)."""

    user_id: Any
    sqlstate: str | None
    message: str


@dataclass
class Batch:
    """One page range once done: what it scanned, created and could not create."""

    first: int = 0
    last: int = 0
    scanned: int = 0
    created: int = 0
    failed: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)


@dataclass
class Report:
    """What a run did (the whole run, across resumes)."""

    run_id: int
    state: str
    dry_run: bool
    resumed: bool
    scanned: int = 0
    created: int = 0
    already_present: int = 0
    failed: int = 0
    quarantined: int = 0
    batches: int = 0
    duration: float = 0.0
    rows_per_second: float = 0.0
    batch_size: int = 0
    total_estimate: int = 0
    # The heap page reached (exclusive) in the current phase.
    cursor: str | None = None
    # 'sweep' (stored name of the scan: the pages in order), then 'catchup' (rows written since the
    # run began).
    phase: str | None = "sweep"
    failures: list[dict[str, Any]] = field(default_factory=list)
    failures_truncated: bool = False
    sample: list[dict[str, Any]] = field(default_factory=list)

    def add(self, batch: Batch, batch_size: int) -> None:
        """Count one batch done (in page order)."""
        self.scanned += batch.scanned
        self.created += batch.created
        self.failed += batch.failed
        self.quarantined += batch.quarantined
        self.batches += 1
        self.batch_size = batch_size
        self.cursor = str(batch.last)
        for failure in batch.failures:
            if len(self.failures) >= FAILURE_LIST_LIMIT:
                self.failures_truncated = True
                break
            self.failures.append(
                {
                    "user_id": str(failure.user_id),
                    "sqlstate": failure.sqlstate,
                    "message": failure.message,
                }
            )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = round(self.duration, 3)
        data["rows_per_second"] = round(self.rows_per_second, 1)
        if self.dry_run:
            data["would_create"] = self.created
            data["would_fail"] = self.failed
        else:
            data.pop("sample")
        return data
