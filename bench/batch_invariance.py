"""What the batch-invariant linears (longcat/engine/batch_invariance.py) cost per transformer forward (tiny, CPU).

    python bench/batch_invariance.py [--size 256] [--rows 1,2,16] [--repeats 40]

One transformer forward (``predict_velocity``, as the denoise loop and the step scheduler call it) at
--size with 1 row (an edit without CFG), 2 (one CFG edit) and 16 (8 CFG edits batched), with the mode on
and off, interleaved; the fastest of --repeats each (on a loaded machine only the fastest runs say what
the code costs). The mode's cost is a pair of Python hooks per linear call, plus registering them around
the forward: a fixed time per forward, largest, relatively, at the smallest forward.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from longcat.api.sizes import Geometry  # noqa: E402
from longcat.conditioning import image_position_ids, predict_velocity, text_position_ids  # noqa: E402
from longcat.engine.batch_invariance import batch_invariant  # noqa: E402
from longcat.models.loading import load_components, resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rows", default="1,2,16")
    ap.add_argument("--text-tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    transformer = load_components(resolve_model("tiny"), device="cpu", precision="fp32").transformer
    g = Geometry(args.size, args.size)
    dim = transformer.config.joint_attention_dim
    text_ids, image_ids = text_position_ids(args.text_tokens, "cpu"), image_position_ids(g, args.text_tokens, "cpu")
    gen = torch.Generator().manual_seed(0)
    for rows in (int(r) for r in args.rows.split(",")):
        noisy, reference = (torch.randn(rows, g.image_seq_len, 64, generator=gen) for _ in range(2))
        embeds = torch.randn(rows, args.text_tokens, dim, generator=gen)
        sigma = torch.rand(rows, generator=gen)
        best = {False: float("inf"), True: float("inf")}
        with torch.no_grad():
            for _ in range(args.repeats):
                for on in (False, True):
                    with batch_invariant(transformer, on):
                        t0 = time.perf_counter()
                        predict_velocity(transformer, noisy, reference, embeds, text_ids, image_ids, sigma)
                        best[on] = min(best[on], time.perf_counter() - t0)
        off, on = best[False], best[True]
        print(f"GOAL batch-invariant linears, one forward, {rows} row(s) at {args.size}²: off {off * 1e3:.2f} ms, "
              f"on {on * 1e3:.2f} ms, overhead {(on - off) * 1e3:+.2f} ms = {100 * (on / off - 1):+.1f}% "
              f"(goal: a few per cent at most)", flush=True)


if __name__ == "__main__":
    main()
