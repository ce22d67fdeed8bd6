"""Ray-compatible job submission API: `from runtime.job_submission import JobSubmissionClient`."""

from .jobs.client import JobStatus, JobSubmissionClient

__all__ = ["JobStatus", "JobSubmissionClient"]
