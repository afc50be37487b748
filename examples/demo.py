"""The main job, end to end (``make demo``): the whole stack on the tiny model, an edit, a short LoRA training
run, an edit with the new adapter, outputs in ``demo-output/``, the stack stopped.

Everything goes through the public surfaces a user has: ``longcat up``, ``longcat edit --gateway``,
``longcat train --wait`` (the quickstart's config and dataloader JSON), ``longcat adapters``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from longcat.launch import free_port  # noqa: E402


def sh(*args: str, env: dict) -> None:
    print("$ longcat " + shlex.join(args), flush=True)
    subprocess.run([sys.executable, "-m", "longcat.cli.main", *args], check=True, env=env, cwd=ROOT)


def start_stack(out: Path, env: dict) -> tuple[subprocess.Popen, str]:
    ports = {flag: str(free_port()) for flag in ("--port", "--encoder-port", "--denoiser-port", "--trainer-port",
                                                 "--http-port")}
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # a private Redis, so a user's own one is never touched
    cmd = [sys.executable, "-m", "longcat.cli.main", "up", "--model", "tiny", "--redis-url", redis_url,
           "--data-dir", str(out / "stack"), "--metrics-port", "0", "--json", *[x for kv in ports.items() for x in kv]]
    print(f"$ longcat up --model tiny ...  (service logs in {out.name}/stack/logs/)", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"longcat up exited with {proc.wait()}: see {out / 'stack' / 'logs'}")
    info = json.loads(line)
    return proc, info["gateway"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-output")
    ap.add_argument("--train-steps", type=int, default=60)
    args = ap.parse_args()
    out = (ROOT / args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "LONGCAT_CACHE": str(out / "cache"), "PYTHONUNBUFFERED": "1"}
    started = time.time()

    stack, gateway = start_stack(out, env)
    env["LONGCAT_GATEWAY"] = gateway
    try:
        print(f"stack up, gateway at {gateway}", flush=True)
        sh("edit", "--image", "examples/sample.png", "--prompt", "make the sky purple", "--width", "256",
           "--height", "192", "--steps", "8", "--seed", "42", "--out", str(out / "edit.png"), env=env)

        # The quickstart's files: config.json.example and dataloader.json.example, pointed at a sample dataset.
        subprocess.run([sys.executable, "-m", "longcat.training.sample_data", "--out", str(out / "train-data")],
                       check=True, env=env, cwd=ROOT)
        config = json.loads((ROOT / "config" / "config.json.example").read_text())
        config.update(max_train_steps=args.train_steps, output_dir="output/demo-invert")
        (out / "config.json").write_text(json.dumps(config, indent=2))
        loader = json.loads((ROOT / "config" / "dataloader.json.example").read_text())
        for ds in loader:
            ds["instance_data_dir"] = str(out / "train-data" / Path(ds["instance_data_dir"]).name)
        (out / "dataloader.json").write_text(json.dumps(loader, indent=2))
        sh("train", "--config", str(out / "config.json"), "--dataloader", str(out / "dataloader.json"),
           "--name", "demo-invert", "--wait", "--results", str(out), env=env)

        sh("adapters", "list", env=env)
        sh("edit", "--image", "examples/sample.png", "--prompt", "invert the colors", "--width", "256",
           "--height", "192", "--steps", "8", "--seed", "42", "--adapter", "demo-invert",
           "--out", str(out / "edit-with-adapter.png"), env=env)
        # Through the gateway, as a user would (the store keeps it as _owners/<owner>/demo-invert/v1).
        sh("adapters", "download", "demo-invert", "--out", str(out / "adapter"), env=env)
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(120)
    print(f"\ndemo done in {time.time() - started:.0f}s; outputs in {out}:")
    for p in sorted(out.glob("*.png")) + sorted((out / "adapter").glob("*")) + sorted((out / "validation").glob("*")):
        if p.name == "grid.png":
            continue  # listed last, with loss.png: the two pictures to open first
        print("  ", p.relative_to(out.parent))
    print(f"open {out.name}/loss.png (training loss) and {out.name}/validation/grid.png (reference | edit per "
          "validation prompt and step); the tiny model is random, so its pictures are noise-like")


if __name__ == "__main__":
    main()
