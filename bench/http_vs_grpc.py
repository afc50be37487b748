"""The HTTP door against the gRPC door on the same stack: edit latency as a ratio (goal <= 1.05 at 256²).

    python bench/http_vs_grpc.py [--model tiny] [--size 256] [--steps 4] [--repeats 7]

Starts a private redis-server, the encoder, one denoiser worker and one gateway as processes, then times the
same seeded edit (--size, --steps, CFG 4.5) through gRPC ``Edit`` and through HTTP ``POST /v1/images/edits``
(multipart in, base64 PNG out, as OpenAI's client does it; one kept-alive httpx connection), interleaved so
machine noise hits both alike. Each repeat uses a new prompt on both sides, so the encoder's cache never
answers. Reports the medians and the fastest run of each, HTTP/gRPC for both, and checks both doors return the same image for the same request.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the services run: several processes share the cores

import httpx  # noqa: E402

from longcat.launch import ROOT, ServiceProcess  # noqa: E402
from longcat.models.loading import resolve_model  # noqa: E402
from longcat.rpc.channel import make_channel  # noqa: E402
from longcat.v1 import edit_pb2, edit_pb2_grpc  # noqa: E402


def start_redis(folder: Path):
    sys.path.insert(0, str(ROOT))
    from tests.redis_proc import RedisProcess

    return RedisProcess(folder).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    model = resolve_model(args.model)
    image = (ROOT / "examples" / "sample.png").read_bytes()
    size, steps = args.size, args.steps

    logs = Path(tempfile.mkdtemp(prefix="bench-http-"))
    redis_proc = start_redis(logs)
    stack = ["--redis-url", redis_proc.url, "--namespace", "bench", "--adapter-dir", str(logs / "adapters")]
    enc = ServiceProcess("encoder", ["--model", model, "--metrics-port", "0"], logs)
    worker = ServiceProcess("denoiser", ["--model", model, *stack, "--encoder", enc.address, "--metrics-port", "0"],
                            logs)
    gw = ServiceProcess("gateway", [*stack, "--metrics-port", "0"], logs, env={"LONGCAT_API_KEYS": ""})
    try:
        for svc in (enc, worker, gw):
            svc.wait_serving(300)
        stub = edit_pb2_grpc.EditServiceStub(make_channel(gw.address))
        http = httpx.Client(base_url=gw.http_url, timeout=600)

        def grpc_edit(i) -> bytes:
            return stub.Edit(edit_pb2.EditRequest(
                image=image, prompt=f"make the sky purple #{i}", width=size, height=size, num_inference_steps=steps,
                guidance_scale=4.5, seed=42), timeout=600).image

        def http_edit(i) -> bytes:
            r = http.post("/v1/images/edits", files={"image": ("sample.png", image, "image/png")},
                          data={"prompt": f"make the sky purple #{i}", "size": f"{size}x{size}",
                                "num_inference_steps": str(steps), "guidance_scale": "4.5", "seed": "42",
                                "response_format": "b64_json"})
            r.raise_for_status()
            return base64.b64decode(r.json()["data"][0]["b64_json"])

        same = grpc_edit("warm") == http_edit("warm")   # warm both paths; the same request, the same image
        t_grpc, t_http = [], []
        for i in range(args.repeats):
            for fn, out in ((grpc_edit, t_grpc), (http_edit, t_http)) if i % 2 == 0 else \
                    ((http_edit, t_http), (grpc_edit, t_grpc)):   # alternate who goes first
                t0 = time.perf_counter()
                fn(f"{fn.__name__}-{i}")
                out.append(time.perf_counter() - t0)
        g, h = statistics.median(t_grpc), statistics.median(t_http)
        print(f"edit {size}x{size}, {steps} steps, CFG 4.5, {args.repeats} repeats, tiny model on CPU")
        print(f"  gRPC Edit               median {g * 1000:8.1f} ms  (all: {', '.join(f'{t * 1000:.0f}' for t in t_grpc)})")
        print(f"  HTTP /v1/images/edits   median {h * 1000:8.1f} ms  (all: {', '.join(f'{t * 1000:.0f}' for t in t_http)})")
        print(f"  HTTP / gRPC = {h / g:.3f} (medians), {min(t_http) / min(t_grpc):.3f} (fastest of each: the cost "
              f"without the machine's noise)   goal <= 1.05   same image from both doors: {same}")
    finally:
        for svc in (gw, worker, enc):
            svc.stop()
        redis_proc.stop()


if __name__ == "__main__":
    main()
