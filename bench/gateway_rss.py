"""Resident memory of an idle, serving gateway, for one or more source trees side by side (e.g. main vs a
branch): which libraries a layering change keeps out of the one public process.

    .venv/bin/python bench/gateway_rss.py --model <tiny model folder> [--tree NAME=PATH ...]

Each tree runs `python -m services.gateway` from PATH (its own `longcat/v1` stubs: run `make protos` or
`python -m longcat.protos_build` there) against a private redis-server; prints VmRSS once the gateway answers
health checks, and the ratio to the first tree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from longcat.launch import free_port  # noqa: E402
from longcat.rpc.channel import make_channel, wait_until_serving  # noqa: E402
from tests.redis_proc import RedisProcess  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(tree: Path, redis_url: str, model: str) -> tuple[float, list[str]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "LONGCAT_API_KEYS": ""}
    cmd = [sys.executable, "-c", "import sys, runpy; sys.argv[0] = 'gateway'; "
           "runpy.run_module('services.gateway', run_name='__main__')",
           "--port", str(port), "--metrics-port", "0", "--redis-url", redis_url, "--model", model]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_serving(make_channel(f"127.0.0.1:{port}"), timeout=120)
        time.sleep(1.0)
        loaded = subprocess.run(["grep", "-l", "-E", "torch|diffusers|transformers", f"/proc/{proc.pid}/maps"],
                                capture_output=True, text=True).stdout
        return rss_mib(proc.pid), ["torch & co. mapped"] if loaded else []
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a built model folder (the gateway loads its tokenizer)")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH", help="source trees (default: this one)")
    args = p.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(ROOT)]]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp)).start()
        try:
            base = None
            for name, path in trees:
                rss, notes = measure(Path(path).resolve(), redis.url, args.model)
                base = base or rss
                print(f"{name:>10}: gateway VmRSS {rss:7.1f} MiB  ratio {rss / base:.2f}  {' '.join(notes)}")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
