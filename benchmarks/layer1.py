"""The Meta-LSTM's layer 1 (the coordinate-wise LSTM) against the hardware: one step's forward and
backward as training runs them, in achieved GFLOP/s of their matrix products, next to what a plain
``torch.matmul`` of the same shapes reaches in the same process.

    python -m benchmarks.layer1 [--coords 112261] [--hidden 20] [--threads 1] [--repeats 20]

Products per step (``n`` coordinates, ``H`` hidden units, ``F`` = 2 input features, ``K = F + H + 1``):

* forward: the gate pre-activations ``[4H, K] x [K, n]``;
* backward: the hidden-state gradient ``[H, 4H] x [4H, n]`` and the weight gradient
  ``[K, n] x [n, 4H]``.

The step's own time also covers its pointwise maths (the gate activations forward, their
derivatives backward), gathers and bookkeeping, so its GFLOP/s (products only) is below the plain
products'; the gap is what the pointwise work and the memory traffic cost. Times are CPU seconds
with one thread (``time.process_time``), wall seconds otherwise; median of ``--repeats`` after warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from benchmarks.common import time_call
from fewshot.nn import native
from fewshot.nn.lstm import CPU_BLOCK_SIZE
from fewshot.run.process import retain_freed_memory

N_FEATURES = 2  # the preprocessed gradient; the loss features are shared, folded into the bias


def _median_ms(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls after three warm-up calls."""
    return 1e3 * time_call(fn, repeats, warmup=3, clock=clock)["median_s"]


def measure(n: int, hidden: int, repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """Milliseconds and GFLOP/s of one layer-1 step (forward with its gates kept, backward) and of
    plain ``torch.matmul`` calls of its product shapes."""
    torch.manual_seed(0)
    k = N_FEATURES + hidden + 1
    x, h, c = torch.randn(N_FEATURES, n), torch.randn(hidden, n), torch.randn(hidden, n)
    w_x, w_h = torch.randn(4 * hidden, N_FEATURES) * 0.3, torch.randn(4 * hidden, hidden) * 0.3
    bias, dh, dc = torch.randn(4 * hidden) * 0.1, torch.randn(hidden, n), torch.randn(hidden, n)
    step = torch.ops.fewshot.lstm_step
    _, _, kept = step(x, h, c, w_x, w_h, bias, CPU_BLOCK_SIZE, True)
    args = (x, h, c, w_x, w_h, bias, kept, dh, dc, CPU_BLOCK_SIZE, False, True, True)
    weight, inputs, d_pre = torch.randn(4 * hidden, k), torch.randn(k, n), torch.randn(4 * hidden, n)
    flops = {"forward": 2 * 4 * hidden * k * n, "backward": 2 * hidden * 4 * hidden * n + 2 * k * 4 * hidden * n}
    times = {
        "forward": _median_ms(lambda: step(x, h, c, w_x, w_h, bias, CPU_BLOCK_SIZE, True), repeats, clock),
        "backward": _median_ms(lambda: torch.ops.fewshot.lstm_step_backward(*args), repeats, clock),
        "matmul_forward": _median_ms(lambda: torch.matmul(weight, inputs), repeats, clock),
        "matmul_backward": _median_ms(lambda: torch.matmul(w_h.t(), d_pre), repeats, clock)
        + _median_ms(lambda: torch.matmul(inputs, d_pre.t()), repeats, clock),
    }
    result = {f"{key}_ms": value for key, value in times.items()}
    for key, value in times.items():
        result[f"{key}_gflops"] = flops[key.removeprefix("matmul_")] / value / 1e6
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coords", type=int, default=112_261, help="coordinates (Omniglot Conv-4: 112,261)")
    parser.add_argument("--hidden", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    native.prepare()
    clock = time.process_time if args.threads == 1 else time.perf_counter
    result = measure(args.coords, args.hidden, args.repeats, clock)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"layer 1, {args.coords} coordinates, H={args.hidden}, threads {args.threads}, "
        f"native {native.available()}, block {CPU_BLOCK_SIZE}"
    )
    for direction in ("forward", "backward"):
        print(
            f"{direction:<9} step {result[f'{direction}_ms']:7.2f} ms {result[f'{direction}_gflops']:6.1f} GFLOP/s"
            f" | torch.matmul of its products {result[f'matmul_{direction}_ms']:7.2f} ms"
            f" {result[f'matmul_{direction}_gflops']:6.1f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
