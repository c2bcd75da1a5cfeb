"""The reference for dlscale's overhead: a plain hand-written PyTorch training step of the
same zoo model on the same synthetic batch at the same settings as `dlscale bench train`
(AdamW, autocast, channels_last, torch.compile), timed the same way (warm-up apart, then
repeats of timed steps with the device synchronised). Prints one JSON object.

    python benchmarks/gpu/plain_step.py --model resnet50 --batch-size 256 --precision bf16 \
        --channels-last --compile --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from dlscale.bench.train import Workload
    from dlscale.models import model_info

    device = torch.device(args.device)
    info = model_info(args.model)
    workload = Workload(info, info.default_input_shape, info.default_num_classes)
    model = workload.build().to(device)  # the same module and initial weights as dlscale's zoo
    x, y = workload.batch(args.batch_size, device)
    if args.channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type in ("cuda", "cpu"))
    forward = torch.compile(model) if args.compile else model

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = forward(x)
            loss = F.cross_entropy(out.flatten(0, -2).float(), y.flatten()) if workload.tokens else F.cross_entropy(out.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    step_times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        sync()
        step_times.append((time.perf_counter() - start) / args.steps)
    median = statistics.median(step_times)
    seq_len = workload.input_shape[0] if workload.tokens else None
    print(json.dumps({
        "kind": "plain-step", "model": args.model, "batch_size": args.batch_size, "precision": args.precision,
        "channels_last": args.channels_last, "compiled": args.compile, "device": str(device),
        "samples_per_second": args.batch_size / median,
        "tokens_per_second": args.batch_size * seq_len / median if seq_len else None,
        "step_time_median_s": median, "step_times_s": step_times, "warmup_s": warmup_s,
        "loss_finite": bool(torch.isfinite(loss).item()),
    }))


if __name__ == "__main__":
    main()
