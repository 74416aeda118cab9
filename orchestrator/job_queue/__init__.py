"""The job queue: claiming with leases, the worker loop, heartbeats, recovery, shutdown."""

from __future__ import annotations

from orchestrator.job_queue.worker import Worker, WorkerConfig, new_worker_id, run_until

__all__ = ["Worker", "WorkerConfig", "new_worker_id", "run_until"]
