"""Edit through the encoder + denoiser services vs the in-process engine, same model, request and run.

    python bench/services_roundtrip.py [--model tiny] [--size 256] [--steps 4] [--repeats 5]

Prints the median wall time of each and their ratio (services / in-process). Both sides run the same
seeded edit; the encoder cache is bypassed by a different prompt per repeat so each repeat pays for a real
encode, as a fresh request would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the services run: three processes share the cores

from longcat.engine import EditEngine, EditRequest  # noqa: E402
from longcat.images import encode_png  # noqa: E402
from longcat.launch import ROOT, ServiceProcess  # noqa: E402
from longcat.models.loading import resolve_model  # noqa: E402
from longcat.rpc.denoiser_client import DenoiserClient  # noqa: E402
from longcat.rpc.encoder_client import EncoderClient  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = resolve_model(args.model)
    image = (ROOT / "examples" / "sample.png").read_bytes()
    size, steps = args.size, args.steps

    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    enc = ServiceProcess("encoder", ["--model", model, "--metrics-port", "0"], logs)
    den = ServiceProcess("denoiser", ["--model", model, "--adapter-dir", str(logs / "adapters"),
                                      "--metrics-port", "0"], logs)
    enc.wait_serving(), den.wait_serving()
    encoder, denoiser = EncoderClient(enc.address), DenoiserClient(den.address)
    engine = EditEngine.load(model, device="cpu")

    def remote(i):
        e = encoder.encode(f"make the sky purple #{i}", image, size, size)
        for ev in denoiser.denoise(e.prompt_embeds, e.negative_embeds, image, size, size, steps, 4.5, 42):
            pass
        return ev.result.image

    def local(i):  # PNG bytes out, as the service returns (and as `longcat edit --model` writes)
        return encode_png(engine.edit(EditRequest(image=image, prompt=f"make the sky purple #{i}", width=size,
                                                  height=size, num_inference_steps=steps, guidance_scale=4.5,
                                                  seed=42)).image)

    try:
        remote(-1), local(-1)  # warm both paths
        t_remote, t_local = [], []
        for i in range(args.repeats):  # interleaved so machine noise hits both alike
            t0 = time.perf_counter(); remote(i); t_remote.append(time.perf_counter() - t0)  # noqa: E702
            t0 = time.perf_counter(); local(i); t_local.append(time.perf_counter() - t0)  # noqa: E702
    finally:
        encoder.close(), denoiser.close()
        enc.stop(), den.stop()
    r, l_ = statistics.median(t_remote), statistics.median(t_local)
    print(f"{size}x{size}, {steps} steps, CFG 4.5, {args.repeats} repeats, model {args.model}")
    print(f"in-process engine+PNG : {l_ * 1000:8.1f} ms (median)")
    print(f"encoder+denoiser gRPC : {r * 1000:8.1f} ms (median)")
    print(f"ratio services/in-process: {r / l_:.3f}")


if __name__ == "__main__":
    main()
