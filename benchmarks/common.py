"""What the benchmark scripts share: the machine they ran on, and how they end."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from reslab.errors import ReslabError

CPU_FLAGS = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]


def cpu_flags() -> dict:
    """The CPU flags that decide PyTorch's kernels (AVX2, AVX-512, native bf16, AMX) and the threads."""
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {"model": platform.processor() or platform.machine(), **{flag: flag in flags for flag in CPU_FLAGS},
            "threads": torch.get_num_threads()}


def write_figures(path: Path, figures: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))
    print(f"written: {path}")


def run_script(main, name: str) -> None:
    """``main()``, a ReslabError ending in one line and exit status 1."""
    try:
        main()
    except ReslabError as exc:
        sys.exit(f"{name}: error: {exc}")
