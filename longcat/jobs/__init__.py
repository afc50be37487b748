"""Jobs over Redis: records, the edit stream and its consumer group, per-job event streams, results.

The gateway writes jobs and reads events; denoiser workers claim, run and finish them. Every state change
is a Lua script, so it is atomic with its event and guarded by a fencing token (one result per job).
"""

from longcat.jobs.store import TERMINAL_STATES, JobStore, JobView

__all__ = ["JobStore", "JobView", "TERMINAL_STATES"]
