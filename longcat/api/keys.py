"""Redis key names. One namespace per stack, so several stacks can share a Redis server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    ns: str = "lc"

    @property
    def edit_stream(self) -> str:        # the edit jobs, consumed by the "denoisers" group
        return f"{self.ns}:edit:stream"

    def edit_stream_for(self, priority: str) -> str:
        """One stream per priority (``low`` / ``normal`` / ``high``); NORMAL keeps the historic name."""
        return self.edit_stream if priority == "normal" else f"{self.ns}:edit:stream:{priority}"

    @property
    def edit_streams(self) -> list[str]:  # highest priority first: the order a worker reads them
        return [self.edit_stream_for(p) for p in PRIORITIES]

    @property
    def edit_queue(self) -> str:         # zset of QUEUED edit jobs by arrival: depth and positions
        return f"{self.ns}:edit:queue"

    @property
    def edit_dead(self) -> str:          # dead letters: jobs that failed every delivery
        return f"{self.ns}:edit:dead"

    @property
    def train_queue(self) -> str:        # zset of QUEUED training jobs (positions); Celery carries the work
        return f"{self.ns}:train:queue"

    @property
    def train_active(self) -> str:       # training jobs a worker holds; the reaper checks their leases
        return f"{self.ns}:train:active"

    def train_lease(self, job_id: str) -> str:
        return f"{self.ns}:train:lease:{job_id}"

    @property
    def sequence(self) -> str:
        return f"{self.ns}:seq"

    def job(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def request(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:request"

    def events(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:events"

    def result(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:result"

    def idempotency(self, owner: str, request_id: str) -> str:
        return f"{self.ns}:idem:{owner}:{request_id}"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.ns}:owner:{owner}:jobs"

    def owner_active(self, owner: str, kind: str) -> str:  # set of the owner's QUEUED + RUNNING jobs of a kind
        return f"{self.ns}:owner:{owner}:active:{kind}"

    def idempotency_payload(self, owner: str, request_id: str) -> str:  # the first request's payload hash
        return f"{self.ns}:idem:{owner}:{request_id}:payload"

    @property
    def adapters(self) -> str:
        return f"{self.ns}:adapters"

    def lock(self, name: str) -> str:
        return f"{self.ns}:lock:{name}"


EDIT_GROUP = "denoisers"
PRIORITIES = ("high", "normal", "low")  # serving order
