"""What a Keras file holds, read with h5py and json only (never Keras, never code from the file).

Whole models come in two containers:

* the legacy whole-model ``.h5`` (``model.save("x.h5")``, Keras 2 and 3), read by
  ``keras_weights``: a group per top-level layer; a nested model (the backbone of a
  ``Sequential([ResNet152V2(include_top=False), Conv2D(...), ..., Dense(10)])``) is one
  group whose ``weight_names`` carry its layers' own names (``conv1_conv/kernel:0``);
* Keras 3's native ``.keras`` archive, read here: a zip with ``config.json`` (the
  architecture) and ``model.weights.h5``, where each model's layers are stored as
  ``layers/<class in snake case>[_<n>]/vars/<i>``, numbered per class in the model's layer
  order, and a nested model's own layers under ``layers/functional/layers/...``. The
  config gives the layer names, classes and order, so each stored layer gets its name back.

Both give a ``StoredWeights``: every weighted layer by its Keras name (nested ones
flattened), and, when the model nests a backbone, the layers after it (the "head") in order.

Files come from anywhere, so each is checked whole before any array is read
(``check_hdf5``): nothing in it may lead outside it (an HDF5 external link, a dataset stored
in an external file or a virtual one), and no dataset may declare more than it holds (an
unwritten chunked dataset reads as its fill value: 8 KB can declare a petabyte). A
``.keras`` archive's members are checked by their declared sizes before one is extracted.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import ReslabError
from ...extras import missing_extra

# A .keras archive's config is a few MB even for deep nets; a bigger one is not a Keras model.
MAX_CONFIG_BYTES = 64 * 2**20
# Keras's container classes: a layer of one of these holds layers of its own.
MODEL_CLASSES = ("Functional", "Sequential", "Model")
# A Keras ResNet's largest array is a few MB (ResNet152V2's top: 8 MB); a user's Dense head on
# flattened features a few hundred MB.
MAX_ARRAY_BYTES = 2**30
# Keras never compresses weights: a dataset may declare at most this many times what it stores
# (beyond a small allowance), and an archive member inflate at most this much (Keras's own
# bound) once it is over the floor; the weights of one model stay under MAX_WEIGHTS_BYTES.
MAX_EXPANSION = 100
SMALL_BYTES = 1 << 16
ZIP_FLOOR_BYTES = 16 * 2**20
MAX_WEIGHTS_BYTES = 16 * 2**30


@dataclass
class StoredWeights:
    layers: dict[str, dict[str, np.ndarray]]  # {Keras layer name: {variable name: array}}
    # (name, kind) of the weighted layers that follow a nested backbone, in the model's order;
    # empty when the file's model is not nested (a keras.applications model as it is).
    head: list[tuple[str, str]] = field(default_factory=list)


def layer_kind(variables: dict[str, np.ndarray]) -> str:
    """"conv", "dense", "bn" or "other", from a layer's variables."""
    kernel = variables.get("kernel")
    if kernel is not None:
        return {4: "conv", 2: "dense"}.get(kernel.ndim, "other")
    return "bn" if "moving_mean" in variables else "other"


def import_h5py():
    try:
        import h5py
    except ImportError:
        raise missing_extra("reading Keras files", "keras") from None
    return h5py


def check_hdf5(file, path: Path) -> None:
    """Refuse an HDF5 file with a link or a dataset outside it, or a dataset that declares more
    than it stores; nothing is read but the file's structure."""
    h5py = import_h5py()

    def link(name: str, target) -> str | None:  # a value returned stops the visit
        if isinstance(target, h5py.ExternalLink):
            return (f"{name} is an HDF5 external link to {target.filename!r}; reslab reads nothing outside the "
                    "file it is given")
        return None

    def dataset(name: str, node) -> str | None:
        if not isinstance(node, h5py.Dataset):
            return None
        if node.external or node.is_virtual:
            return (f"dataset {name} keeps its data outside the file (HDF5 external storage or a virtual "
                    "dataset); reslab reads nothing outside the file it is given")
        declared, stored = node.size * node.dtype.itemsize, node.id.get_storage_size()
        if declared > MAX_ARRAY_BYTES or declared > MAX_EXPANSION * stored + SMALL_BYTES:
            return (f"dataset {name} declares {declared:,} bytes (shape {node.shape}) but stores {stored:,}: not "
                    "the weights of a model (an unwritten or inflating dataset)")
        return None

    # The links first: nothing is opened through an external one. (h5py turns an exception raised
    # inside a visit into a SystemError, hence the returned message.)
    problem = file.visititems_links(link) or file.visititems(dataset)
    if problem:
        raise ReslabError(f"{path}: {problem}")


@contextmanager
def open_hdf5(path: Path, shown: Path | None = None):
    """An HDF5 file opened for reading once ``check_hdf5`` has passed it."""
    h5py = import_h5py()
    with h5py.File(path, "r") as file:
        check_hdf5(file, shown or path)
        yield file


def check_archive_member(archive: zipfile.ZipFile, name: str, path: Path) -> int:
    """The declared size of an archive member, refused when over the bounds above (a zip bomb)."""
    info = archive.getinfo(name)
    size, packed = info.file_size, info.compress_size
    if size > MAX_WEIGHTS_BYTES or (size > ZIP_FLOOR_BYTES and size > MAX_EXPANSION * max(packed, 1)):
        raise ReslabError(f"{path}: its {name} would inflate to {size / 1e9:.1f} GB from {packed / 1e6:.1f} MB; "
                          "Keras stores weights uncompressed, so this is no Keras model (a zip bomb?)")
    return size


def is_keras_archive(path: Path) -> bool:
    return path.suffix == ".keras" or zipfile.is_zipfile(path)


def read_keras_archive(path: Path) -> StoredWeights:
    """The weights of a Keras 3 ``.keras`` archive, named after its ``config.json``."""
    import_h5py()
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise ReslabError(f"{path} is a zip archive but not a Keras model (.keras archives hold "
                                  "config.json and model.weights.h5)")
            if check_archive_member(archive, "config.json", path) > MAX_CONFIG_BYTES:
                raise ReslabError(f"{path}: its config.json is over {MAX_CONFIG_BYTES >> 20} MB; not a Keras model")
            config = json.loads(archive.read("config.json"))
            size = check_archive_member(archive, "model.weights.h5", path)
            # h5py reads a real file far faster than a zip member (24 s against 1 s for ResNet152V2).
            with tempfile.TemporaryDirectory(prefix="reslab-keras-") as folder:
                weights = Path(folder) / "model.weights.h5"
                with archive.open("model.weights.h5") as source, open(weights, "wb") as target:
                    while size > 0 and (chunk := source.read(min(1 << 22, size))):  # never past the declared size
                        target.write(chunk)
                        size -= len(chunk)
                with open_hdf5(weights, path) as file:
                    return _read_model(config, file, path)
    except ReslabError:
        raise
    except Exception as exc:  # zipfile, json, h5py and KeyError for a damaged or foreign archive
        raise ReslabError(f"Keras archive {path} cannot be read, it is truncated or not a .keras file "
                          f"({type(exc).__name__}: {str(exc).strip()[:160]})") from None


def _read_model(config: dict, file, path: Path) -> StoredWeights:
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or "layers" not in config["config"]:
        raise ReslabError(f"{path}: its config.json describes no model with layers")
    if "layers" not in file:
        raise ReslabError(f"{path}: its model.weights.h5 has no layers group")
    stored = StoredWeights({})
    top: list[str] = []
    nested = _walk(config["config"]["layers"], file["layers"], stored, top)
    if nested:
        stored.head = [(name, layer_kind(stored.layers[name])) for name in top]
    return stored


def snake_case(class_name: str) -> str:
    """Keras's group name for a class: ``Conv2D`` -> ``conv2d``, ``BatchNormalization`` ->
    ``batch_normalization``, ``MaxPooling2D`` -> ``max_pooling2d``."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _walk(layers: list, group, stored: StoredWeights, top: list[str] | None) -> bool:
    """Read the layers of one model level into ``stored``; ``top`` collects this level's
    weighted layers (None inside a nested model). Returns whether a nested model was met."""
    counts: dict[str, int] = {}
    nested = False
    for layer in layers:
        class_name, options = layer.get("class_name", ""), layer.get("config") or {}
        key = snake_case(class_name)
        index = counts.get(key, 0)
        counts[key] = index + 1
        stored_name = key if index == 0 else f"{key}_{index}"
        if stored_name not in group:
            continue  # InputLayer and other layers without state
        if class_name in MODEL_CLASSES or "layers" in options:
            if "layers" in group[stored_name]:
                _walk(options.get("layers", []), group[stored_name]["layers"], stored, None)
                nested = True
            continue
        arrays = group[stored_name].get("vars")
        if arrays is None or len(arrays) == 0:
            continue
        names = _variable_names(class_name, options, len(arrays))
        variables = {name: arrays[str(i)][()] for i, name in enumerate(names)}
        stored.layers[options.get("name", stored_name)] = variables
        if top is not None:
            top.append(options.get("name", stored_name))
    return nested


def _variable_names(class_name: str, options: dict, count: int) -> list[str]:
    """The names of a layer's stored variables, in Keras's order."""
    if class_name == "BatchNormalization":
        names = (["gamma"] if options.get("scale", True) else []) + (["beta"] if options.get("center", True) else [])
        names += ["moving_mean", "moving_variance"]
    elif class_name in ("Conv2D", "Dense"):
        names = ["kernel"] + (["bias"] if options.get("use_bias", True) else [])
    else:
        names = []
    if len(names) != count:  # another layer class: keep its variables, by position
        names = [str(i) for i in range(count)]
    return names
