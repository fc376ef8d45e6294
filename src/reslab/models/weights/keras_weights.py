"""Keras applications' ResNet weights into reslab models, read with h5py (no TensorFlow or Keras).

Three file layouts are read:

* the legacy ``.h5`` of keras.applications (``resnet50v2_weights_tf_dim_ordering_tf_kernels.h5``
  and ``model.save("x.h5")``): a group per layer *name*, its ``weight_names`` attribute
  listing the datasets (``conv1_conv/kernel:0``, ...);
* Keras 3's ``.weights.h5`` (``model.save_weights``): ``layers/<class>_<n>/vars/<i>``, the
  layers named by class and counted in the model's layer order (``conv2d_3``), so the
  mapping rebuilds Keras's layer order: in a block 1_conv, 2_conv, the shortcut 0_conv,
  then 3_conv (Keras orders a functional model's layers by their depth from the output);
* Keras 3's ``.keras`` archive (``model.save("x.keras")``): the same groups, named from
  the archive's config (``keras_files``).

Whole models that nest the ResNet as a backbone (``Sequential([ResNet152V2(include_top=False),
Conv2D(...), ..., Dense(10)])``, report 000's) are read in every format: the backbone's
layers by their own names, then the layers after it in order onto the reslab model's head
(report 000's four convs, Dense(512) and Dense(classes); a single Dense onto ``fc``). A
``.weights.h5`` has no config, so there the head's convs are taken before its dense layers.

Targets: ``resnet50v2``/``101v2``/``152v2`` and report 000's model (whose head keeps its
initialisation when the file has only the backbone), and Keras's V1 ``ResNet50``/``101``/``152``
onto reslab's ``resnet50``/... built with ``stride_in="1x1"`` (Keras V1 strides in the first 1x1 conv). Keras V1 puts
biases in convs that reslab (like torchvision) leaves out because a BN follows; a bias b
before a BN is folded exactly into its moving mean (mean - b), and the BN epsilon is set
to Keras's 1.001e-5.

Conv kernels go from Keras's (H, W, in, out) to torch's (out, in, H, W), dense kernels
from (in, out) to (out, in). ResNetV2 takes RGB scaled to [-1, 1] (``inception``). V1 takes
BGR with the ImageNet means subtracted on the 0-255 scale (Keras's ``caffe`` mode); the loaded
model takes RGB instead, because the stem conv's input channels are reversed on loading, so
the one RGB pipeline with ``data.normalization=caffe`` gives Keras's numbers
(``keras_preprocessing`` says which a model name needs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ...errors import ReslabError
from ..blocks import Bottleneck
from ..imagenet import ImageNetResNet
from ..preact import KERAS_BN_EPSILON, ResNetV2
from .keras_files import StoredWeights, import_h5py, is_keras_archive, layer_kind, open_hdf5, read_keras_archive

# Keras 3 names the layers of a .weights.h5 after their class.
KERAS3_CLASS_NAMES = {"conv": "conv2d", "bn": "batch_normalization", "dense": "dense"}
# The order of a layer's variables in a Keras 3 file.
KERAS3_VARIABLES = {
    "conv": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
# Each variable's rank, and which ones a layer cannot do without.
VARIABLE_RANKS = {
    "conv": {"kernel": 4, "bias": 1},
    "bn": {"gamma": 1, "beta": 1, "moving_mean": 1, "moving_variance": 1},
    "dense": {"kernel": 2, "bias": 1},
}
REQUIRED_VARIABLES = {"conv": ("kernel",), "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
                      "dense": ("kernel",)}


# The reslab models Keras V1 weights load into (built with stride_in="1x1").
KERAS_V1_MODELS = ("resnet50", "resnet101", "resnet152")


def keras_preprocessing(model_name: str) -> Literal["caffe", "inception"]:
    """The ``data.normalization`` Keras weights for ``model_name`` were trained with."""
    return "caffe" if model_name in KERAS_V1_MODELS else "inception"


@dataclass(frozen=True)
class KerasLayer:
    name: str  # the Keras layer name, e.g. "conv3_block2_1_conv"
    kind: str  # "conv", "bn" or "dense"
    module: str  # the reslab module path, e.g. "conv3.block2.conv1"
    bias_into_bn: str | None = None  # a conv bias to fold into this BN's moving mean (Keras V1)


def keras_v2_layers(model: ResNetV2) -> list[KerasLayer]:
    """The weighted layers of Keras's ResNetV2 in Keras's order, with their reslab modules."""
    layers = [KerasLayer("conv1_conv", "conv", "conv1")]
    for stage in model.stage_names:
        for block_name, block in getattr(model, stage).named_children():
            keras, path = f"{stage}_{block_name}", f"{stage}.{block_name}"
            layers += [
                KerasLayer(f"{keras}_preact_bn", "bn", f"{path}.preact_bn"),
                KerasLayer(f"{keras}_1_conv", "conv", f"{path}.conv1"),
                KerasLayer(f"{keras}_1_bn", "bn", f"{path}.bn1"),
                KerasLayer(f"{keras}_2_conv", "conv", f"{path}.conv2"),
                KerasLayer(f"{keras}_2_bn", "bn", f"{path}.bn2"),
            ]
            if block.conv0 is not None:
                layers.append(KerasLayer(f"{keras}_0_conv", "conv", f"{path}.conv0"))
            layers.append(KerasLayer(f"{keras}_3_conv", "conv", f"{path}.conv3"))
    layers.append(KerasLayer("post_bn", "bn", "post_bn"))
    # Keras's top; report 000's model has its own head on a top-less backbone instead.
    if isinstance(model.fc, nn.Linear) and model.fc.in_features == model.num_features:
        layers.append(KerasLayer("predictions", "dense", "fc"))
    return layers


def _v1_conv(keras_block: str, path: str, index: str, conv: str, bn: str) -> KerasLayer:
    """A Keras V1 conv, whose bias reslab folds into the BN that follows it."""
    return KerasLayer(f"{keras_block}_{index}_conv", "conv", f"{path}.{conv}", bias_into_bn=f"{path}.{bn}")


def keras_v1_layers(model: ImageNetResNet) -> list[KerasLayer]:
    """The weighted layers of Keras's ResNet50/101/152 (V1) in Keras's order."""
    first = model.layer2[0]
    if not isinstance(first, Bottleneck) or not model.residual:
        raise ReslabError("Keras's V1 ResNets are bottleneck ResNets: use resnet50, resnet101 or resnet152")
    if first.conv1.stride != (2, 2):
        raise ReslabError("Keras's V1 ResNets stride in the first 1x1 conv: build the model with stride_in='1x1'")
    layers = [KerasLayer("conv1_conv", "conv", "conv1", bias_into_bn="bn1"), KerasLayer("conv1_bn", "bn", "bn1")]
    for stage_index, stage in enumerate(model.stage_names, start=2):
        for block_index, block in enumerate(getattr(model, stage), start=1):
            keras, path = f"conv{stage_index}_block{block_index}", f"{stage}.{block_index - 1}"
            layers += [
                _v1_conv(keras, path, "1", "conv1", "bn1"),
                KerasLayer(f"{keras}_1_bn", "bn", f"{path}.bn1"),
                _v1_conv(keras, path, "2", "conv2", "bn2"),
                KerasLayer(f"{keras}_2_bn", "bn", f"{path}.bn2"),
            ]
            if block.downsample is not None:
                layers.append(_v1_conv(keras, path, "0", "downsample.0", "downsample.1"))
            layers.append(_v1_conv(keras, path, "3", "conv3", "bn3"))
            if block.downsample is not None:
                layers.append(KerasLayer(f"{keras}_0_bn", "bn", f"{path}.downsample.1"))
            layers.append(KerasLayer(f"{keras}_3_bn", "bn", f"{path}.bn3"))
    layers.append(KerasLayer("predictions", "dense", "fc"))
    return layers


def keras_head_targets(model: nn.Module) -> list[tuple[str, str]]:
    """(kind, module) of the reslab layers a Keras head maps onto, in order: the convs and
    linears of ``model.head`` (report 000's), then ``fc``."""
    targets = []
    head = getattr(model, "head", None)
    if isinstance(head, nn.Sequential):
        for name, module in head.named_children():
            if isinstance(module, nn.Conv2d):
                targets.append(("conv", f"head.{name}"))
            elif isinstance(module, nn.Linear):
                targets.append(("dense", f"head.{name}"))
    if isinstance(getattr(model, "fc", None), nn.Linear):
        targets.append(("dense", "fc"))
    return targets


def _read_layers(path: Path, layers: list[KerasLayer]) -> StoredWeights:
    """The weights in the file by Keras layer name, and the head after a nested backbone."""
    import_h5py()
    if not path.is_file():
        raise ReslabError(f"no Keras weights file at {path}: check the path")
    if is_keras_archive(path):
        return read_keras_archive(path)
    try:
        with open_hdf5(path) as file:
            root = file["model_weights"] if "model_weights" in file else file
            if "layer_names" in root.attrs:
                return _read_legacy(root)
            if "layers" in file:
                return _read_keras3(file["layers"], layers)
    except ReslabError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError or ValueError for a damaged file
        raise ReslabError(
            f"Keras weights file {path} cannot be read, it is truncated or not an HDF5 file "
            f"({type(exc).__name__}: {str(exc).strip()[:160]})"
        ) from None
    raise ReslabError(f"{path} is an HDF5 file but not Keras weights (no layer_names and no layers group)")


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attribute_list(group, name: str) -> list[str]:
    """A list attribute; Keras splits one over 64 KB into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        return [_text(value) for value in group.attrs[name]]
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values += [_text(value) for value in group.attrs[f"{name}{chunk}"]]
        chunk += 1
    return values


def _read_legacy(root) -> StoredWeights:
    stored = StoredWeights({})
    top, nested = [], False
    for layer_name in _attribute_list(root, "layer_names"):
        group = root[layer_name]
        by_layer: dict[str, dict[str, np.ndarray]] = {}
        for weight_name in _attribute_list(group, "weight_names"):
            # "conv1_conv/kernel:0" (Keras 2), "conv1_conv/kernel" or "sequential/conv2d/kernel" (Keras 3)
            *scope, variable = weight_name.split("/")
            owner = scope[-1] if scope else layer_name
            by_layer.setdefault(owner, {})[variable.split(":")[0]] = group[weight_name][()]
        if len(by_layer) == 1:  # a layer of its own, whatever scope its weights were named in
            stored.layers[layer_name] = next(iter(by_layer.values()))
            top.append(layer_name)
        elif by_layer:  # a nested model (a Sequential's backbone): its layers by their own names
            stored.layers.update(by_layer)
            nested = True
    if nested:
        stored.head = [(name, layer_kind(stored.layers[name])) for name in top]
    return stored


def _read_keras3(group, layers: list[KerasLayer]) -> StoredWeights:
    nested = [name for name in group if "layers" in group[name]]
    if nested:  # model.save_weights of a Sequential around the ResNet: layers/functional/layers/...
        stored = _read_keras3(group[nested[0]]["layers"], layers)
        stored.head = _keras3_head(group, stored)
        return stored
    counts: dict[str, int] = {}
    found = {}
    for layer in layers:
        base = KERAS3_CLASS_NAMES[layer.kind]
        n = counts.get(base, 0)
        counts[base] = n + 1
        stored = base if n == 0 else f"{base}_{n}"
        if stored not in group or "vars" not in group[stored] or len(group[stored]["vars"]) == 0:
            continue
        arrays = group[stored]["vars"]
        found[layer.name] = {
            name: arrays[str(i)][()] for i, name in enumerate(KERAS3_VARIABLES[layer.kind][: len(arrays)])
        }
    stored_convs = sum(1 for name in group if name.split("_")[0] == "conv2d" and len(group[name].get("vars", [])))
    expected_convs = counts.get("conv2d", 0)
    if stored_convs != expected_convs:
        raise ReslabError(
            f"the Keras file holds {stored_convs} conv layers but the model has {expected_convs}: "
            "it holds the weights of another architecture"
        )
    return StoredWeights(found)


def _keras3_head(group, stored: StoredWeights) -> list[tuple[str, str]]:
    """The weighted layers beside the nested backbone of a ``.weights.h5``. Without a config
    the order across classes is unknown: the convs are taken before the dense layers (as in
    every conv head, report 000's included), each class in Keras's numbering."""
    head = []
    for kind, base in (("conv", "conv2d"), ("dense", "dense")):
        numbered = {}
        for name in group:
            match = re.fullmatch(rf"{base}(?:_(\d+))?", name)
            if match:
                numbered[int(match.group(1) or 0)] = name
        for _, name in sorted(numbered.items()):
            arrays = group[name].get("vars")
            if arrays is None or len(arrays) == 0:
                continue
            key = f"head/{name}"
            names = KERAS3_VARIABLES[kind][: len(arrays)]
            stored.layers[key] = {var: arrays[str(i)][()] for i, var in enumerate(names)}
            head.append((key, kind))
    return head


def _checked_variables(layer: KerasLayer, variables: dict, path: Path) -> dict[str, np.ndarray]:
    """A layer's variables as arrays of numbers of the right rank, finite, each that the layer
    needs present, a batch norm's variance not negative; else one error line naming the layer."""
    where = f"Keras weights file {path}: layer {layer.name!r}"
    ranks = VARIABLE_RANKS[layer.kind]
    missing = [name for name in REQUIRED_VARIABLES[layer.kind] if name not in variables]
    if missing:
        raise ReslabError(f"{where} has no {missing[0]} (a Keras {layer.kind} layer holds {', '.join(ranks)}); "
                          "the file is damaged or not a Keras ResNet")
    checked = {}
    for name, rank in ranks.items():
        if name not in variables:
            continue
        array = np.asarray(variables[name])
        if array.dtype.kind not in "fiu":
            raise ReslabError(f"{where}: its {name} holds {array.dtype} values, not numbers")
        if array.ndim != rank:
            raise ReslabError(f"{where}: its {name} has shape {array.shape}, {array.ndim} dimensions where a "
                              f"{layer.kind} {name} has {rank}")
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)  # the models' dtype: 1e300 in a float64 file is infinite there
        if not np.isfinite(array).all():
            raise ReslabError(f"{where}: its {name} holds values that are not finite (NaN or infinity)")
        checked[name] = array
    if layer.kind == "bn" and (checked["moving_variance"] < 0).any():
        raise ReslabError(f"{where}: its moving_variance has negative values, which no variance has")
    return checked


def _head_layers(head: list[tuple[str, str]], targets: list[tuple[str, str]], model_name: str,
                 notes: list[str]) -> list[KerasLayer]:
    """The file's head layers onto the model's, matched in order when their kinds agree."""
    if [kind for _, kind in head] == [kind for kind, _ in targets]:
        return [KerasLayer(name, kind, module) for (name, kind), (_, module) in zip(head, targets)]
    found = ", ".join(kind for _, kind in head) or "no weighted layers"
    expected = ", ".join(kind for kind, _ in targets) or "none"
    notes.append(f"the file's head ({found}) does not match {model_name}'s ({expected}): the model keeps its own")
    return []


def load_keras_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load Keras ResNet(V2) weights from ``path`` (weights or a whole model around the ResNet,
    any format); returns notes (no top, a head that does not fit)."""
    path = Path(path)
    if isinstance(model, ResNetV2):
        layers = keras_v2_layers(model)
    elif isinstance(model, ImageNetResNet):
        layers = keras_v1_layers(model)
    else:
        raise ReslabError(
            f"Keras weights load into resnet50v2/101v2/152v2 and resnet50/101/152 (stride_in='1x1'), "
            f"not {type(model).__name__}"
        )
    stored = _read_layers(path, layers)
    notes: list[str] = []
    if stored.head:  # a whole model around the ResNet: the layers after it replace Keras's top
        layers = [layer for layer in layers if layer.name != "predictions"]
        layers += _head_layers(stored.head, keras_head_targets(model), type(model).__name__, notes)
    state = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    folded_biases: dict[str, torch.Tensor] = {}

    def put(key: str, array: np.ndarray, keras_name: str) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if tuple(tensor.shape) != tuple(state[key].shape):
            raise ReslabError(
                f"Keras weights file {path} does not fit {type(model).__name__}: {keras_name} has shape "
                f"{tuple(tensor.shape)} for {key!r}, the model {tuple(state[key].shape)}"
            )
        converted[key] = tensor.to(state[key].dtype)

    def bias_of(variables: dict[str, np.ndarray], prefix: str) -> np.ndarray:
        # A Keras layer with use_bias=False onto a torch layer with a bias: a zero bias.
        return variables.get("bias", np.zeros(tuple(state[f"{prefix}.bias"].shape), np.float32))

    for layer in layers:
        if layer.name not in stored.layers:
            if layer.kind == "dense":
                notes.append("the file has no top (include_top=False): fc keeps its initialisation")
                continue
            raise ReslabError(
                f"Keras weights file {path} has no layer {layer.name!r}: it is not a weights file of this "
                f"{type(model).__name__} (another depth or another architecture)"
            )
        variables = _checked_variables(layer, stored.layers[layer.name], path)
        prefix = layer.module
        if layer.kind == "conv":
            put(f"{prefix}.weight", variables["kernel"].transpose(3, 2, 0, 1), layer.name)
            if "bias" in variables and layer.bias_into_bn is not None:
                folded_biases[layer.bias_into_bn] = torch.from_numpy(variables["bias"])
            elif f"{prefix}.bias" in state:
                put(f"{prefix}.bias", bias_of(variables, prefix), layer.name)
        elif layer.kind == "bn":
            put(f"{prefix}.weight", variables["gamma"], layer.name)
            put(f"{prefix}.bias", variables["beta"], layer.name)
            put(f"{prefix}.running_mean", variables["moving_mean"], layer.name)
            put(f"{prefix}.running_var", variables["moving_variance"], layer.name)
        else:
            kernel = variables["kernel"].T
            if prefix == "fc" and tuple(kernel.shape) != tuple(state["fc.weight"].shape):
                notes.append(
                    f"skipped the file's {kernel.shape[0]}-class top: the model has "
                    f"{state['fc.weight'].shape[0]} classes and keeps its fresh head"
                )
                continue
            put(f"{prefix}.weight", kernel, layer.name)
            put(f"{prefix}.bias", bias_of(variables, prefix), layer.name)

    # BN(conv(x) + b) == BN'(conv(x)) with moving mean - b; in training the batch mean absorbs b.
    for bn_path, bias in folded_biases.items():
        key = f"{bn_path}.running_mean"
        converted[key] = converted[key] - bias.to(converted[key].dtype)
    if folded_biases:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = KERAS_BN_EPSILON
        notes.append(f"folded {len(folded_biases)} Keras conv biases into the BN moving means; BN epsilon 1.001e-5")
    if isinstance(model, ImageNetResNet):  # Keras V1 reads BGR: the same conv over RGB has its inputs reversed
        converted["conv1.weight"] = converted["conv1.weight"].flip(1)
        notes.append("reversed the stem conv's input channels: the model takes RGB with data.normalization=caffe")
    model.load_state_dict(converted, strict=False)
    return notes
