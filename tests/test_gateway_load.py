"""The gateway never starves: while many calls wait (WatchJob streams, blocking Edits, all on queued jobs that
never run), health checks and short calls (GetJob, SubmitEdit) keep answering. Runs bench/gateway_load.py on
this tree against its own redis-server and gateway, through both doors (gRPC, and HTTP: SSE streams, blocking
/v1/images/edits, readyz and GET /v1/jobs/{id} probes). Bounded in CI (200 streams + 40 edits, 100 SSE
streams + 20 HTTP edits, a generous 10 s deadline per probe: on the old thread-per-call gateway they queued
behind the waiting calls and timed out);
``LONGCAT_LONG_TESTS=1`` runs the issue's figure: 1,000 streams + 100 blocking edits on each door."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LONG = os.environ.get("LONGCAT_LONG_TESTS") == "1"


def test_short_calls_answer_while_many_calls_wait():
    watchers, edits, sse, http_edits = (1000, 100, 1000, 100) if LONG else (200, 40, 100, 20)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gateway_load.py"), "--json", "--watchers",
                          str(watchers), "--edits", str(edits), "--sse", str(sse), "--http-edits", str(http_edits),
                          "--probe-s", "20" if LONG else "8",
                          "--every-s", "0.25", "--deadline-s", "10", "--settle-s", "120"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["alive"], r
    # Every stream reached the server and heard its job's first event (its queued event).
    assert r["streams_with_first_event"] == watchers and r["sse_with_first_event"] == sse, r
    for probe in ("health", "get_job", "submit_edit", "http_readyz", "http_get_job"):
        assert r[probe]["ok"] >= 3 and r[probe]["timeouts"] == 0 and r[probe]["errors"] == 0, (probe, r)
