"""What the KubeRay operator does with a release's RayJobs on an existing cluster (`clusterSelector`).

Each RayJob's submitter sends its entrypoint to the head's job API; when the job fails (the driver exits
non-zero, or the head that ran it is gone) the operator submits it again, up to `backoffLimit` retries.
An upgrade that renders new RayJob names deletes the old RayJobs (their Ray jobs are stopped) and
creates the new ones. A submission id is the RayJob's name and its attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rehearsal.release import DriverJob

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

#: Ray job states after which a job runs no more.
_ENDED = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class JobRecord:
    job: DriverJob
    attempts: int = 0
    submission_id: str = ""
    #: Every ended attempt: (submission id, final status or "LOST" when its head went away).
    history: list[tuple[str, str]] = field(default_factory=list)
    given_up: bool = False
    deleted: bool = False


class RayJobOperator:
    def __init__(self, dashboard_address: str, translate: Callable[[str], str], log: Callable[[str], None]) -> None:
        self.dashboard_address = dashboard_address
        self.translate = translate
        self.log = log
        self.records: dict[str, JobRecord] = {}
        #: RayJobs an upgrade deleted, with their attempts.
        self.deleted: list[JobRecord] = []
        self._cached: tuple[str, JobSubmissionClient] | None = None

    def _client(self) -> JobSubmissionClient:
        """One client per head address (making one asks the dashboard for its version: not on every poll)."""
        from ray.job_submission import JobSubmissionClient  # lazily: importing Ray's client is slow

        if self._cached is None or self._cached[0] != self.dashboard_address:
            self._cached = (self.dashboard_address, JobSubmissionClient(self.dashboard_address))
        return self._cached[1]

    def apply(self, jobs: list[DriverJob]) -> None:
        """Create these RayJobs; delete (stop) those no longer rendered, as `helm upgrade` makes the operator do."""
        names = {job.name for job in jobs}
        for name in list(self.records):
            if name not in names:
                record = self.records.pop(name)
                self._client().stop_job(record.submission_id)
                record.deleted = True
                self.deleted.append(record)
                self.log(f"operator: RayJob {name} deleted (its job {record.submission_id} stopped)")
        for job in jobs:
            if job.name not in self.records:
                self.records[job.name] = JobRecord(job)
                self._submit(self.records[job.name])

    def _submit(self, record: JobRecord) -> None:
        record.attempts += 1
        record.submission_id = f"{record.job.name}-{record.attempts}"
        self._client().submit_job(entrypoint=self.translate(record.job.entrypoint), submission_id=record.submission_id)
        self.log(f"operator: submitted {record.submission_id}")

    def reconcile(self, head_restarted: bool = False) -> None:
        """Resubmit every failed job (or every job, when the head that ran them restarted) within backoffLimit."""
        for record in self.records.values():
            if record.given_up:
                continue
            if head_restarted:
                status = "LOST"
            else:
                status = str(self._client().get_job_status(record.submission_id).value)
                if status not in _ENDED:
                    continue
            record.history.append((record.submission_id, status))
            retries = record.attempts - 1
            if status == "SUCCEEDED":
                record.given_up = True
            elif retries >= record.job.backoff_limit:
                record.given_up = True
                self.log(f"operator: {record.job.name} failed after {retries} retries (backoffLimit)")
            else:
                self.log(f"operator: {record.submission_id} ended {status}; resubmitting")
                self._submit(record)

    def logs(self, name: str) -> str:
        return self._client().get_job_logs(self.records[name].submission_id)
