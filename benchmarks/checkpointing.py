"""Activation checkpointing for very deep nets: peak memory and time of one training step
of ResNet-1202 (CIFAR) and pre-activation ResNet-1001, with and without per-block
checkpointing (``model.grad_checkpointing=true``).

Each measurement runs in a fresh process, so the peak resident memory it reports
(ru_maxrss, minus that of the same process after building the model) is that step's
alone; on a GPU it reports torch.cuda.max_memory_allocated instead.

    python benchmarks/checkpointing.py [--batch-size 32] [--models resnet1202,preact_resnet1001]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(model_name: str, batch_size: int, checkpointing: bool, steps: int) -> dict:
    import torch

    from reslab import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(model_name).to(device)
    model.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (batch_size,), device=device)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    return {"model": model_name, "batch_size": batch_size, "checkpointing": checkpointing,
            "seconds_per_step": sorted(times)[len(times) // 2], "peak_step_memory_mb": peak, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet1202,preact_resnet1001")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.batch_size, args.child[1] == "1", args.steps)))
        return
    rows = []
    for model_name in args.models.split(","):
        for checkpointing in (False, True):
            output = subprocess.run([sys.executable, __file__, "--child", model_name, str(int(checkpointing)),
                                     "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                                    capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{model_name:<18} checkpointing {'on ' if checkpointing else 'off'}  "
                  f"{row['seconds_per_step']:6.2f} s/step  peak {row['peak_step_memory_mb']:8.0f} MB")
    out = Path(__file__).parent / "results" / "checkpointing.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
