"""``longcat edit``: one edit through the stack's gateway (the default: ``--gateway``, else ``$LONGCAT_GATEWAY``,
else 127.0.0.1:50051), or in-process on a model with ``--model``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from longcat.errors import InvalidArgument


def parse_adapter(text: str):
    """``NAME[:SCALE]`` -> AdapterRef."""
    from longcat.engine import AdapterRef

    name, _, scale = text.partition(":")
    try:
        return AdapterRef(name=name, scale=float(scale) if scale else 1.0)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not NAME[:SCALE]", "adapter") from None


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit an image with an instruction")
    p.add_argument("--image", required=True, help="reference image (PNG, JPEG, WebP)")
    p.add_argument("--prompt", required=True, help="the edit instruction")
    p.add_argument("--out", required=True, help="where to write the edited PNG")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model", default=None, help="run in-process, without the stack: a diffusers folder, "
                                                     "a hub id or 'tiny'")
    where.add_argument("--gateway", default=None, help="HOST:PORT of a running stack (default $LONGCAT_GATEWAY, "
                                                       "else 127.0.0.1:50051)")
    p.add_argument("--width", type=int, default=0, help="output width, multiple of 16 (default 0 = about 1 "
                                                        "megapixel keeping the input's aspect: 256x192 -> 1184x896)")
    p.add_argument("--height", type=int, default=0, help="output height, multiple of 16 (give both or neither)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=4.5, help="classifier-free guidance (default 4.5)")
    p.add_argument("--seed", type=int, default=None, help="seed (default random; the one used is reported)")
    p.add_argument("--negative-prompt", default="", help="negative prompt (default empty)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME[:SCALE]",
                   help="LoRA adapter by name with optional scale; repeatable")
    p.add_argument("--adapter-dir", default=os.environ.get("LONGCAT_ADAPTER_DIR"),
                   help="in-process: folder of adapters (NAME/pytorch_lora_weights.safetensors)")
    p.add_argument("--device", default="auto", help="in-process: cpu, cuda, cuda:1 or auto")
    p.add_argument("--precision", default="fp32", help="in-process: fp32, bf16, fp16, int8-quanto, fp8-torchao")
    p.add_argument("--truncate-prompt", action="store_true", help="truncate prompts over 512 tokens instead of failing")
    p.add_argument("--api-key", default=None, help="through the gateway: API key (default $LONGCAT_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.model:
        return _run_in_process(args)
    return _run_remote(args)  # the client resolves --gateway, then $LONGCAT_GATEWAY, then 127.0.0.1:50051


def _run_remote(args) -> int:
    """Through the stack: submit, follow the steps with a progress bar, write the result."""
    from longcat.cli.remote import client, follow
    from longcat.client.sync import _job_error
    from longcat.errors import NotFound
    from longcat.v1 import edit_pb2

    image_path = Path(args.image)
    if not image_path.is_file():
        raise NotFound(f"no such file {args.image!r}", "image")
    with client(args) as lc:
        job = lc.submit_edit(image_path.read_bytes(), args.prompt, negative_prompt=args.negative_prompt,
                             width=args.width, height=args.height, steps=args.steps, guidance=args.guidance,
                             seed=args.seed, adapters=args.adapter, truncate_prompt=args.truncate_prompt)
        final = follow(lc, job.id, bars=not args.json)
    if final.state != edit_pb2.SUCCEEDED:
        raise _job_error(final)
    r = final.result
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(r.image)
    summary = {"ok": True, "out": str(out), "job_id": job.id, "width": r.width, "height": r.height, "seed": r.seed,
               "timings": {"queued_s": round(r.timings.queued_s, 4), "total_s": round(r.timings.total_s, 4)}}
    print(json.dumps(summary) if args.json else
          f"wrote {out} ({r.width}x{r.height}, seed {r.seed}, job {job.id}, {r.timings.total_s:.2f}s)")
    return 0


def _run_in_process(args) -> int:
    from tqdm import tqdm

    from longcat.api.edit import validate_request
    from longcat.engine import EditEngine, EditRequest
    from longcat.errors import NotFound

    image_path = Path(args.image)
    if not image_path.is_file():
        raise NotFound(f"no such file {args.image!r}", "image")
    request = EditRequest(
        image=image_path.read_bytes(), prompt=args.prompt, negative_prompt=args.negative_prompt,
        width=args.width, height=args.height, num_inference_steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed, adapters=[parse_adapter(a) for a in args.adapter], truncate_prompt=args.truncate_prompt,
    )
    # Checked before the model loads: a typo must not cost a full load of the real model.
    validated = validate_request(request)
    engine = EditEngine.load(args.model, device=args.device, precision=args.precision,
                             adapter_root=args.adapter_dir)
    with tqdm(total=validated.num_inference_steps, desc="denoising", unit="step",
              disable=True if args.json else None) as bar:  # None: a bar only on a terminal
        result = engine.edit(validated, on_step=lambda ev: bar.update(ev.step - bar.n))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from longcat.images import encode_png

    out.write_bytes(encode_png(result.image))
    summary = {"ok": True, "out": str(out), "width": result.width, "height": result.height, "seed": result.seed,
               "timings": {k: round(v, 4) for k, v in result.timings.items()}}
    print(json.dumps(summary) if args.json else
          f"wrote {out} ({result.width}x{result.height}, seed {result.seed}, {result.timings['total_s']:.2f}s)")
    return 0
