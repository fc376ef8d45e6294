"""Reading weights files safely and loading state_dicts that come from elsewhere.

Files are read with ``torch.load(weights_only=True)`` (tensors and plain containers only,
never arbitrary pickled code) or, for ``.safetensors``, with safetensors. Every problem a
user can cause ends in one ``ReslabError`` line: no file, a truncated or foreign file, a
file for another model (naming the first mismatched key).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...errors import ReslabError
from ...torchfiles import first_line, safe_torch_load
from ..transfer import head_names

# Where training scripts commonly nest the state_dict inside a checkpoint dict.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# Prefixes added by DataParallel / DistributedDataParallel and by torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ReslabError(f"no weights file at {path}: check the path")
    if path.suffix != ".safetensors":
        return extract_state_dict(safe_torch_load(path, "weights file"), str(path))
    try:
        from safetensors.torch import load_file

        content = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise ReslabError(f"{path} is not a readable weights file: truncated or not a safetensors file "
                          f"({type(exc).__name__}: {first_line(exc)})") from None
    return extract_state_dict(content, str(path))


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(content, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict itself, or the one nested under a usual key of a checkpoint dict."""
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, dict):
        for key in CONTAINER_KEYS:
            if _is_state_dict(content.get(key)):
                return dict(content[key])
        keys = ", ".join(map(str, list(content)[:8]))
        raise ReslabError(f"{source} holds no state_dict of tensors (its top-level keys: {keys})")
    raise ReslabError(f"{source} holds a {type(content).__name__}, not a state_dict")


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) from the keys."""
    stripped = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        stripped[key] = value
    return stripped


def _candidate_keys(key: str):
    """The key itself, then renamings from common PyTorch reproductions.

    akamaster/pytorch_resnet_cifar10 calls the classifier ``linear`` and a projection
    shortcut ``shortcut.0/.1`` (its option-A ``shortcut`` LambdaLayer has no parameters).
    """
    yield key
    if key.startswith("linear."):
        yield "fc." + key[len("linear.") :]
    if ".shortcut." in key:
        yield key.replace(".shortcut.", ".downsample.")


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def load_state_dict_flexible(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str = "state_dict",
    skip_mismatched_head: bool = False,
) -> list[str]:
    """Load ``state_dict`` into ``model`` after renaming known foreign key styles.

    All keys must match by name and shape (``num_batches_tracked`` may be absent), or a
    ``ReslabError`` names the first mismatched key. With ``skip_mismatched_head`` a head of
    another size (another number of classes) is left as initialised instead. Returns notes
    on what was adapted, for the caller to print.
    """
    expected = model.state_dict()
    notes: list[str] = []
    state = strip_wrapper_prefixes(state_dict)
    if any(key.startswith(WRAPPER_PREFIXES) for key in state_dict):
        notes.append("stripped DataParallel/compile prefixes from the keys")
    renamed: dict[str, torch.Tensor] = {}
    renamings = []
    for key, value in state.items():
        target = next((c for c in _candidate_keys(key) if c in expected), key)
        if target in state and target != key:  # the file has both names: keep its own
            target = key
        if target != key:
            renamings.append(f"{key} -> {target}")
        renamed[target] = value
    if renamings:
        notes.append(f"renamed {len(renamings)} keys from another implementation's names ({renamings[0]}, ...)")

    mismatched = [k for k, v in renamed.items() if k in expected and _shape(v) != _shape(expected[k])]
    if skip_mismatched_head and mismatched:
        prefixes = tuple(f"{name}." for name in head_names(model))
        if any(k.startswith(prefixes) for k in mismatched):
            file_head = [k for k in renamed if k.startswith(prefixes)]
            shapes = ", ".join(f"{k} {_shape(renamed[k])}" for k in file_head if k.endswith("weight"))
            notes.append(f"skipped the file's head ({shapes}): it does not fit; the model keeps its fresh head")
            for key in file_head:
                del renamed[key]
            for key in expected:
                if key.startswith(prefixes):
                    renamed[key] = expected[key]
            mismatched = [k for k in mismatched if not k.startswith(prefixes)]

    missing = [k for k in expected if k not in renamed and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in renamed if k not in expected]
    problems = []
    if mismatched:
        key = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        problems.append(
            f"shape of {key!r} is {_shape(renamed[key])} in the file but {_shape(expected[key])} in the model{more}"
        )
    if missing:
        problems.append(f"{len(missing)} keys missing from the file (first {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} keys unknown to the model (first {unexpected[0]!r})")
    if problems:
        raise ReslabError(
            f"{source} does not fit {type(model).__name__}: {'; '.join(problems)}; "
            "were these weights saved from another model or another number of classes?"
        )
    check_finite(renamed, expected, source)
    model.load_state_dict(renamed, strict=False)
    return notes


def check_finite(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity, or values that become infinite in the model's
    dtype (1e300 in a float64 file): the model would answer NaN for every input."""
    for key, value in state_dict.items():
        if not value.is_floating_point():
            continue
        target = expected[key].dtype if key in expected and expected[key].is_floating_point() else value.dtype
        bad = ~torch.isfinite(value) | (value.abs() > torch.finfo(target).max)
        if bool(bad.any()):
            raise ReslabError(f"{source}: {key!r} holds values that are not finite (NaN or infinity, "
                              f"{int(bad.sum()):,} of {value.numel():,}); the file is damaged or its training diverged")
