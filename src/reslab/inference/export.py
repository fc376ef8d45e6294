"""Export a checkpoint for use outside reslab: ONNX and a torch.export program (.pt2), both
with any batch size, and TorchScript (which PyTorch deprecates), each checked against
PyTorch on fresh inputs, safetensors weights with a JSON of what is
needed to rebuild and feed the model (architecture, classes, image size, mean/std), and a
folder in timm's and the Hugging Face hub's layout (model.safetensors + config.json)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ReslabError
from ..extras import missing_extra
from ..runfs import is_run_folder, refuse_run_file
from .predict import load_model

# Each format's suffix for the default output name; "hub" writes a folder.
EXPORT_FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt", "safetensors": ".safetensors", "hub": "-hub"}
# What each format is, for the command line's help.
FORMAT_HELP = {
    "onnx": "ONNX, any batch size (ONNX Runtime and other runtimes)",
    "pt2": "a torch.export program, any batch size: torch.export.load(path).module()",
    "torchscript": "TorchScript, which PyTorch deprecates: prefer pt2",
    "safetensors": "weights, with a JSON of what rebuilds and feeds the model",
    "hub": "a folder in timm's and the Hugging Face hub's layout",
}
PARITY_TOLERANCE = 1e-4  # max abs difference of logits allowed between PyTorch and the export
ONNX_OPSET = 18


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    extra_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"written: {self.path}"] + [f"written: {extra}" for extra in self.extra_files]
        lines.append(f"parity with PyTorch: max abs difference of logits {self.max_abs_diff:.3g} "
                     f"(tolerance {PARITY_TOLERANCE:g})")
        return "\n".join(lines + self.notes)


def export_metadata(meta: dict) -> dict:
    """What a user of the exported file needs to rebuild the network and prepare its inputs."""
    return {
        "architecture": meta["model"], "model_options": meta.get("model_options", {}),
        "num_classes": meta["num_classes"], "in_channels": meta["in_channels"], "classes": meta["classes"],
        "image_size": meta["image_size"], "mean": meta["mean"], "std": meta["std"],
        "preprocess": meta.get("preprocess"),
        "task": meta.get("task", "single-label"), "dataset": meta.get("dataset"), "reslab_version": __version__,
        "input": "float32 (N, C, H, W): pixels / 255, minus mean, divided by std, per channel",
        "output": "logits (N, classes): softmax for single-label, sigmoid for multi-label",
        # reslab calibrate's temperature scaling (Guo et al. 2017): softmax(logits / temperature)
        "temperature": meta.get("temperature", 1.0),
    }


def default_output(checkpoint: Path, format: str) -> Path:
    checkpoint = Path(checkpoint)
    stem = checkpoint.name if checkpoint.is_dir() else checkpoint.stem
    return Path(stem + EXPORT_FORMATS[format])


def export_checkpoint(checkpoint: Path | str, format: str, output: Path | str | None = None) -> ExportResult:
    if format not in EXPORT_FORMATS:
        raise ReslabError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    model, meta = load_model(checkpoint, "cpu")
    output = Path(output) if output is not None else default_output(Path(checkpoint), format)
    if format == "hub":
        return export_hub(model, meta, output)
    if output.is_dir():
        example = output / default_output(Path(checkpoint), format)
        raise ReslabError(f"--output {output} is a folder; give a file name, e.g. {example}")
    for target in (output, output.with_suffix(".json")):  # the export and its metadata side file
        refuse_run_file(target, output, "write the export elsewhere")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create the folder of {output}: {exc.strerror}") from None
    exporter = {"onnx": export_onnx, "pt2": export_pt2, "torchscript": export_torchscript,
                "safetensors": export_safetensors}[format]
    return exporter(model, meta, output)


def example_inputs(meta: dict, batch: int, seed: int) -> torch.Tensor:
    """Normalized-looking inputs (zero mean, unit variance) of the checkpoint's shape."""
    height, width = meta["image_size"]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, meta["in_channels"], height, width, generator=generator)


def check_parity(reference: Callable[[torch.Tensor], np.ndarray], exported: Callable[[torch.Tensor], np.ndarray],
                 meta: dict, what: str) -> float:
    """Max abs difference of the two on batches of 1 and 3 (neither the batch size traced
    with, so a batch axis baked in by mistake fails too); a ReslabError over the tolerance."""
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        inputs = example_inputs(meta, batch, seed)
        expected, got = reference(inputs), exported(inputs)
        if expected.shape != got.shape:
            raise ReslabError(f"{what} gives outputs of shape {got.shape} for a batch of {batch}; "
                              f"PyTorch gives {expected.shape}")
        worst = max(worst, float(np.abs(expected - got).max()))
    if not worst <= PARITY_TOLERANCE:  # also catches NaN
        raise ReslabError(f"{what} disagrees with PyTorch: max abs difference of logits {worst:.3g} > "
                          f"{PARITY_TOLERANCE:g}; the exported file is not to be trusted")
    return worst


def _torch_reference(model: nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    @torch.inference_mode()
    def run(inputs: torch.Tensor) -> np.ndarray:
        return model(inputs).float().numpy()

    return run


def _staged(output: Path, write: Callable[[Path], None]) -> Path:
    """Write through ``write`` to a temporary file beside ``output``; the caller moves it into
    place once checked (so a failed export never leaves a file that looks good)."""
    # Not mkstemp: the file should get the user's usual permissions, not 0600.
    tmp = output.parent / f".{output.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        write(tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReslabError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _finish(tmp: Path, output: Path, check: Callable[[Path], float]) -> float:
    try:
        difference = check(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
    return difference


# ---------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, meta: dict, output: Path) -> ExportResult:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise missing_extra("ONNX export", "export", str(exc)) from None

    def write(path: Path) -> None:
        # torch.export-based exporter; the batch axis is symbolic so any batch size runs.
        try:
            torch.onnx.export(model, (example_inputs(meta, 2, 0),), str(path), input_names=["images"],
                              output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              opset_version=ONNX_OPSET, external_data=False, verbose=False)
        except ImportError as exc:
            raise missing_extra("ONNX export", "export", str(exc)) from None
        exported = onnx.load(str(path))
        for key, value in export_metadata(meta).items():  # readable by any ONNX runtime's metadata API
            entry = exported.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(exported, str(path))

    def check(path: Path) -> float:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return check_parity(_torch_reference(model), lambda x: session.run(None, {"images": x.numpy()})[0],
                            meta, "the ONNX model (ONNX Runtime)")

    difference = _finish(_staged(output, write), output, check)
    return ExportResult(output, "onnx", difference)


# ---------------------------------------------------------------- torch.export (.pt2)


def export_pt2(model: nn.Module, meta: dict, output: Path) -> ExportResult:
    """The graph torch.export captures, with a symbolic batch axis, saved by torch.export.save
    (TorchScript's successor); the metadata travels inside as the extra file reslab.json."""

    def write(path: Path) -> None:
        program = torch.export.export(model, (example_inputs(meta, 2, 0),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        # Through file objects: given a path, torch.export wants it to end in .pt2, which the
        # staging file beside the output does not.
        with open(path, "wb") as file:
            torch.export.save(program, file, extra_files={"reslab.json": json.dumps(export_metadata(meta))})

    def check(path: Path) -> float:
        with open(path, "rb") as file:
            loaded = torch.export.load(file).module()
        return check_parity(_torch_reference(model), _torch_reference(loaded), meta, "the torch.export program")

    difference = _finish(_staged(output, write), output, check)
    return ExportResult(output, "pt2", difference)


# ---------------------------------------------------------------- TorchScript


def export_torchscript(model: nn.Module, meta: dict, output: Path) -> ExportResult:
    def write(path: Path) -> None:
        with warnings.catch_warnings():
            # PyTorch 2.14 marks TorchScript deprecated; the format is still what C++/mobile users load.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, example_inputs(meta, 2, 0))
            torch.jit.save(traced, str(path), _extra_files={"reslab.json": json.dumps(export_metadata(meta))})

    def check(path: Path) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        return check_parity(_torch_reference(model), _torch_reference(loaded), meta, "the TorchScript model")

    difference = _finish(_staged(output, write), output, check)
    return ExportResult(output, "torchscript", difference,
                        notes=["note: PyTorch deprecates TorchScript; --format pt2 (torch.export) is its successor"])


# ---------------------------------------------------------------- safetensors


def metadata_path(output: Path) -> Path:
    return output.with_suffix(".json")


def export_safetensors(model: nn.Module, meta: dict, output: Path) -> ExportResult:
    from safetensors.torch import load_file, save_file

    if output.suffix == ".json":
        raise ReslabError(f"--output {output}: the metadata goes to a .json beside the weights; "
                          "give the weights another suffix (.safetensors)")
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}

    def check(path: Path) -> float:
        # Rebuild the network from the metadata alone, as a user would, and compare outputs.
        from ..evaluate.runner import load_weights
        from ..models import model_from_meta

        info = export_metadata(meta)
        rebuilt = model_from_meta({"model": info["architecture"], "num_classes": info["num_classes"],
                               "in_channels": info["in_channels"], "model_options": info["model_options"]})
        load_weights(rebuilt, load_file(str(path)), path)
        return check_parity(_torch_reference(model), _torch_reference(rebuilt.eval()), meta, "the safetensors weights")

    weights = _staged(output, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    difference = _finish(weights, output, check)
    text = json.dumps(export_metadata(meta), indent=2) + "\n"
    os.replace(_staged(metadata_path(output), lambda path: path.write_text(text)), metadata_path(output))
    return ExportResult(output, "safetensors", difference, [metadata_path(output)])


# ---------------------------------------------------------------- hub folder (timm, Hugging Face)


def export_hub(model: nn.Module, meta: dict, output: Path) -> ExportResult:
    """A folder of model.safetensors and config.json in timm's layout, checked by rebuilding
    the network from the folder alone; written beside ``output`` and moved into place."""
    from safetensors.torch import save_file

    from ..models.weights.hub import CONFIG_FILE, WEIGHTS_FILE, hub_config, load_hub_model, timm_note

    _check_hub_output(output, (CONFIG_FILE, WEIGHTS_FILE))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create the folder of {output}: {exc.strerror}") from None
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    text = json.dumps(hub_config(meta, getattr(model, "num_features", 0)), indent=2) + "\n"
    staging = output.parent / f".{output.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        staging.mkdir()
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(text)
        rebuilt, _ = load_hub_model(staging)
        difference = check_parity(_torch_reference(model), _torch_reference(rebuilt.eval()), meta, "the hub folder")
        if output.is_dir():  # a previous export: replace its files
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                os.replace(staging / name, output / name)
        else:
            os.replace(staging, output)
    except OSError as exc:
        raise ReslabError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(output, "hub", difference, [output / WEIGHTS_FILE, output / CONFIG_FILE],
                        notes=[timm_note(meta, output)])


def _check_hub_output(output: Path, own_files: tuple[str, ...]) -> None:
    """A new folder, an empty one or an earlier reslab hub export; never a run folder."""
    if output.exists() and not output.is_dir():
        raise ReslabError(f"--output {output} is a file; the hub format writes a folder (e.g. {output.stem}-hub)")
    if not output.is_dir():
        return
    if is_run_folder(output) or (output.name == "checkpoints" and is_run_folder(output.parent)):
        raise ReslabError(f"--output {output} is a run folder; write the hub folder elsewhere")
    others = sorted(path.name for path in output.iterdir() if path.name not in own_files)
    if others or ((output / own_files[0]).exists() and not _is_reslab_config(output / own_files[0])):
        listed = ", ".join((others or [own_files[0]])[:3])
        raise ReslabError(f"--output {output} is a folder holding other files ({listed}); give a new or empty folder")


def _is_reslab_config(path: Path) -> bool:
    """Whether ``path`` is the config.json of an earlier hub export of reslab's."""
    try:
        return isinstance(json.loads(path.read_text(encoding="utf8")).get("reslab"), dict)
    except (OSError, ValueError, AttributeError):
        return False
