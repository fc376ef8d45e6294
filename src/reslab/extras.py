"""The optional parts of reslab and the one wording of "this needs an extra": reslab is
installed from a clone, so the command that works is ``pip install -e '.[extra]'`` there;
the packages themselves are named too, for an environment reslab was installed into."""

from __future__ import annotations

from .errors import ReslabError

# extra -> the PyPI packages it installs (as pyproject.toml's optional-dependencies say)
EXTRAS = {
    "keras": "h5py", "coco": "pycocotools", "torchcodec": "torchcodec", "tensorboard": "tensorboard",
    "wandb": "wandb", "mlflow": "mlflow-skinny", "hub": "huggingface_hub", "timm": "timm", "tune": "optuna",
    "cluster": "submitit", "export": "onnx onnxscript onnxruntime", "corruptions": "imagecorruptions",
}


def install_hint(extra: str) -> str:
    return f"pip install -e '.[{extra}]' in the reslab clone, or pip install {EXTRAS[extra]}"


def missing_extra(feature: str, extra: str, detail: str = "") -> ReslabError:
    """The error for ``feature`` used without its optional packages."""
    return ReslabError(f"{feature} needs {EXTRAS[extra]}: {install_hint(extra)}" + (f" ({detail})" if detail else ""))
