"""Redis memory for N queued edits with large reference images: the gateway of a baseline commit (default
``main``: the request, image included, stored in Redis) vs this tree's (image in the blob store, Redis keeps
a reference), side by side on one private redis-server.

Each side: a real gateway process (no worker, so the edits stay queued, as in a full queue), N ``SubmitEdit``
calls over gRPC with an incompressible PNG, then Redis' ``used_memory`` minus the empty database's. The
baseline runs from ``git archive <ref>`` in a temporary folder with this tree's generated gRPC stubs (the
protos are the same). Prints one JSON line; the ratio is baseline / blobs.

    python bench/redis_memory.py                      # 20 jobs, 1536x1536 noise PNG (~7 MB each)
    python bench/redis_memory.py --jobs 50 --side 2048 --baseline main
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from longcat.launch import free_port  # noqa: E402
from longcat.rpc.channel import health_status, make_channel  # noqa: E402
from longcat.v1 import edit_pb2, edit_pb2_grpc  # noqa: E402


def noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def baseline_tree(ref: str, into: Path) -> Path:
    """``git archive ref`` unpacked into ``into`` (read-only use of the repository), plus the gRPC stubs."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    shutil.copytree(ROOT / "longcat" / "v1", into / "longcat" / "v1", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return into


def start_gateway(cwd: Path, redis_url: str, ns: str, blob_dir: Path, logs: Path):
    port = free_port()
    args = [sys.executable, "-m", "services.gateway", "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_url, "--namespace", ns, "--http-port", "0", "--metrics-port", "0",
            "--max-queue", "100000", "--adapter-dir", str(logs / "adapters"),
            "--data-root", str(logs / "data"), "--output-root", str(logs / "outputs")]
    env = {**os.environ, "LONGCAT_API_KEYS": "", "LONGCAT_BLOB_DIR": str(blob_dir)}  # the baseline ignores it
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=open(logs / f"gateway-{ns}.log", "ab"),
                            stderr=subprocess.STDOUT)
    channel = make_channel(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while health_status(channel) != "SERVING":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gateway in {cwd} did not start: see {logs}")
        time.sleep(0.3)
    return proc, channel


def measure(cwd: Path, redis, ns: str, image: bytes, jobs: int, work: Path) -> dict:
    redis.flushall()
    time.sleep(0.2)
    empty = redis.info("memory")["used_memory"]
    blob_dir = work / f"blobs-{ns}"
    proc, channel = start_gateway(cwd, URL, ns, blob_dir, work)
    try:
        stub = edit_pb2_grpc.EditServiceStub(channel)
        for i in range(jobs):
            job = stub.SubmitEdit(edit_pb2.EditRequest(image=image, prompt=f"edit {i}", width=1024, height=1024,
                                                       num_inference_steps=50, seed=i), timeout=120)
            assert job.state == edit_pb2.QUEUED, job
        used = redis.info("memory")["used_memory"] - empty
        largest = max(redis.memory_usage(k) or 0 for k in redis.scan_iter(match=f"{ns}:*"))
        on_disk = sum(p.stat().st_size for p in blob_dir.rglob("*") if p.is_file()) if blob_dir.exists() else 0
        return {"redis_used_bytes": used, "per_job_bytes": used // jobs, "largest_key_bytes": largest,
                "blob_dir_bytes": on_disk}
    finally:
        channel.close()
        proc.terminate()
        proc.wait(30)


URL = ""


def main() -> None:
    global URL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--side", type=int, default=1536, help="the reference PNG's side (random pixels)")
    ap.add_argument("--baseline", default="main", help="git ref whose gateway stores images in Redis")
    opts = ap.parse_args()
    from tests.redis_proc import RedisProcess

    image = noise_png(opts.side)
    with tempfile.TemporaryDirectory(prefix="bench-redis-memory-") as tmp:
        work = Path(tmp)
        server = RedisProcess(work, appendonly=False).start()
        URL = server.url
        redis = server.client()
        try:
            base = measure(baseline_tree(opts.baseline, work / "baseline"), redis, "base", image, opts.jobs, work)
            blobs = measure(ROOT, redis, "blobs", image, opts.jobs, work)
        finally:
            redis.close()
            server.stop()
    print(json.dumps({"jobs": opts.jobs, "image_bytes": len(image), "baseline": opts.baseline,
                      "baseline_redis": base, "blobs_redis": blobs,
                      "ratio": round(base["redis_used_bytes"] / max(1, blobs["redis_used_bytes"]), 1)}))


if __name__ == "__main__":
    main()
