"""Device choice, threads, seeding and the deterministic mode: the set-up every layer that
runs a model shares (training, evaluation, benchmarks, prediction)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import ReslabError


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA, then Apple's MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ReslabError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ReslabError(f"device {name!r} asked for, but no CUDA GPU is available; use train.device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ReslabError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ReslabError("device 'mps' asked for, but Apple's MPS is not available here")
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``, without making the host wait for a GPU.

    A copy from ordinary (pageable) memory with ``non_blocking=False`` synchronizes the
    stream: the host waits for every kernel queued before it, so it can no longer run
    ahead of the GPU. From pinned memory the copy is queued like a kernel (PyTorch's
    caching host allocator keeps the pinned block until the copy is done)."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure(device: torch.device, deterministic: bool, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        # Fixed input shapes: let cuDNN pick the fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True


def compile_model(network: torch.nn.Module, mode: str | None) -> torch.nn.Module:
    """``torch.compile``, with Inductor's kernel cache kept apart per forced CPU capability.

    Inductor's cache key does not include ``ATEN_CPU_CAPABILITY``: kernels cached by a run with
    the CPU's own (AVX-512) kernels were reused by a run forced to AVX2 on the same machine, and
    that run died of SIGSEGV. A forced capability therefore gets a cache folder of its own,
    unless the user named one."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if capability:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        # Importing torch._dynamo (the optimizer and DDP do) already writes the default folder
        # into the environment, so "not set" and "set to the default" both mean "not the user's".
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{capability}"
    return torch.compile(network, mode=mode)


def rng_state() -> dict:
    """Every global random state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
