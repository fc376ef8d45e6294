"""The typed run configuration: built in Python, loaded from YAML, overridden from the
command line with ``section.key=value``, validated with a message naming the bad key,
and saved with every run.

Every field is read in one place; ``None`` in a data or augment field means "the dataset's
default", filled in once by ``reslab.data.resolve_defaults`` and written resolved into the
run folder. Fields with a fixed set of values are ``Literal`` types, and validation takes
the allowed values from them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ReslabError
from .precision import Precision

# The datasets reslab reads: held in memory (small images), or read from files.
DatasetName = Literal["digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "kmnist", "folder", "imagenet", "coco"]
IN_MEMORY_DATASETS = typing.get_args(DatasetName)[:6]
FILE_DATASETS = typing.get_args(DatasetName)[6:]
Normalization = Literal["auto", "dataset", "imagenet", "inception", "caffe", "none"]


@dataclass
class ModelConfig:
    name: str = "resnet20"  # a registered model (reslab models): resnet20 ... 1202, plain20, resnet50, wrn28_10
    shortcut: Literal["A", "B"] = "A"  # CIFAR nets: "A" zero-padded identity (paper's CIFAR choice), "B" projection
    stride_in: Literal["3x3", "1x1"] = "3x3"  # ImageNet bottlenecks: "3x3" (v1.5, torchvision's) or "1x1" (the paper's)
    pretrained: str | None = None  # a weights/Keras file, a hub folder, hf-hub:org/name, or a torchvision name
    freeze: str = "none"  # "none" fine-tunes all, "backbone" trains the head only, or K: the last K stages
    unfreeze_epoch: int | None = None  # from this epoch (1-based) on, everything trains (freeze, then fine-tune)
    grad_checkpointing: bool = False  # recompute activations per block (very deep nets)


@dataclass
class DataConfig:
    name: DatasetName = "digits"  # digits (embedded), cifar10/100, mnist, fashion-mnist, kmnist, folder, imagenet,
    #                               coco
    root: str = "data"  # where the dataset files are, or go when downloaded
    download: bool = True  # fetch a missing dataset (needs the network)
    val_size: float = 0.1  # held out of the training set: a fraction, or a count if >= 1
    test_size: float = 0.2  # datasets without an official test split (digits): the held-out part
    train_size: float | None = None  # train on a stratified subset of this many images (a fraction if < 1); None: all
    split_seed: int = 0  # the train/val/test split; fixed across training seeds so runs compare
    # auto: the pretrained weights' own (imagenet for torchvision; Keras files: inception [-1, 1] for V2,
    # caffe (ImageNet means on 0-255, no scaling) for V1), else dataset (the training split's mean and std)
    normalization: Normalization = "auto"
    image_size: int | None = None  # the model's square input: in-memory data is resized to it (e.g. 224 for
    #                                ImageNet backbones); file data is cropped to it (None: 224, COCO 448)
    channels: int | None = None  # 3 repeats grayscale images into RGB (for RGB-pretrained backbones)
    # File datasets (folder, imagenet, coco):
    resize_size: int | None = None  # evaluation: resize the shorter side to this, then centre crop (None: size/0.875)
    # evaluation: centre crop, or squash the whole image (None: the dataset's; COCO squashes)
    center_crop: bool | None = None
    coco_year: Literal[2014, 2017] = 2017  # COCO: which release's annotation files
    keep_unannotated: bool = False  # COCO: keep images with no annotation (all-negative targets)
    strict: bool = False  # decode every file before training and refuse the dataset at the first bad one
    workers: int | None = None  # loader processes per loader; None: from the CPUs available
    # auto: TorchCodec where installed, else torchvision.io; Pillow for what they cannot read (data/decode.py)
    decoder: Literal["auto", "torchcodec", "torchvision", "pil"] = "auto"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # file datasets: the resize filter (timm: bicubic)


@dataclass
class AugmentConfig:
    crop_padding: int | None = None  # pad-and-random-crop by this many pixels (paper: 4); 0 off
    hflip: bool | None = None  # random horizontal flip (paper: on for CIFAR; off for digits)
    rotation: float = 0.0  # random rotation, +/- degrees (report 000 used it)
    scale: float = 0.0  # random zoom, +/- this fraction
    # File datasets:
    random_resized_crop: float | None = None  # smallest crop area fraction (0.08); 0 off; None: dataset's
    color_jitter: float = 0.0  # brightness/contrast/saturation strength
    auto_augment: Literal["none", "trivial", "rand", "auto"] = "none"  # TrivialAugment, RandAugment, AutoAugment
    random_erasing: float = 0.0  # probability
    # Any dataset, single- or multi-label (batch transforms):
    mixup: float = 0.0  # Beta(alpha, alpha); 0 off
    cutmix: float = 0.0  # Beta(alpha, alpha); 0 off (both on: one of them per batch)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"  # the paper: SGD with momentum
    lr: float = 0.1  # the base rate, for the global batch (see lr_reference_batch)
    momentum: float = 0.9  # SGD
    nesterov: bool = False  # SGD: Nesterov momentum
    weight_decay: float = 1e-4  # L2 penalty (decoupled for adamw)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW
    backbone_lr: float | None = None  # transfer learning: a separate rate for the pretrained part
    # Weight decay on batch-norm weights and all biases too, as the ResNet paper and torchvision's
    # reference scripts do; false exempts them, as many later recipes (and timm) do.
    decay_norm_and_bias: bool = True
    # Linear scaling rule (Goyal et al. 2017): if set, the rate used is lr * batch_size / this.
    # None uses lr as given; either way the rate is for the global batch, whatever the process count.
    lr_reference_batch: int | None = None
    clip_grad_norm: float | None = None  # clip the global gradient norm to this before each update (None: off)


@dataclass
class ScheduleConfig:
    name: Literal["multistep", "cosine", "onecycle", "constant"] = "multistep"  # stepped every iteration
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])  # multistep: where the rate drops
    unit: Literal["iter", "epoch"] = "iter"  # milestones counted in iterations (the paper) or epochs
    gamma: float = 0.1  # multistep: the factor at each milestone
    warmup: Literal["none", "constant", "linear"] = "none"  # constant: the paper's ResNet-110 (lr 0.01 first)
    warmup_iters: int = 0  # iterations of warm-up (the paper's ResNet-110: 400)
    warmup_lr: float = 0.01  # the constant warm-up's rate; the linear one starts here
    min_lr: float = 0.0  # cosine floor


@dataclass
class TrainConfig:
    epochs: int | None = None  # stop after this many epochs ...
    max_iters: int | None = 64000  # ... or iterations (the paper: 64k); the first reached. Both empty: the
    #                                length (and a batch too large) sized to the training split (train/setup.py)
    # Seconds of training (evaluation excluded). The schedule runs on this clock instead of
    # the step count, so that it ends, annealed, when the time is spent, whatever the speed;
    # train.epochs / max_iters stay upper bounds. Not bit-for-bit repeatable: speed varies.
    time_limit: float | None = None
    batch_size: int = 128  # the global batch: split among torchrun processes
    eval_batch_size: int = 512  # images per batch when validating and testing
    label_smoothing: float = 0.0  # cross-entropy towards (1 - e) on the label and e spread over all classes
    loss: Literal["auto", "cross_entropy", "bce", "asymmetric"] = "auto"  # auto: cross-entropy, multi-label bce;
    #                                                      asymmetric: Ridnik et al. 2021
    threshold: float = 0.5  # multi-label: a label is predicted when its sigmoid is over this
    seed: int = 0  # initial weights, data order and augmentation draws
    deterministic: bool = False  # bitwise-repeatable kernels (slower on GPU)
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps
    # bf16 trained 2.0-2.1x faster here, but cost plain-20 1.2 points on digits (3 seeds; README),
    # so fp32 stays the default; auto = bf16 where the device computes it natively, else fp32
    precision: Precision = "fp32"  # bf16 (autocast), fp16 (autocast + GradScaler, GPU), auto
    channels_last: bool = True  # NHWC: measured 1.3x faster here in fp32 and faster in bf16; cuDNN prefers it too
    compile: bool = False  # torch.compile the model
    # torch.compile's mode (with train.compile=true); reduce-overhead uses CUDA graphs on a GPU
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # Split each batch into this many micro-batches, one forward/backward each, one update:
    # the same global batch, schedule and data order in less activation memory.
    accumulate: int = 1
    threads: int | None = None  # CPU intra-op threads; None leaves PyTorch's default
    sync_bn: bool = False  # batch-norm statistics over the global batch of all processes
    # Keep an exponential moving average of the weights (decay, e.g. 0.999; it warms up as
    # min(decay, (1+n)/(10+n))); both are validated each epoch and the better one is kept.
    ema: float | None = None
    ema_bn_batches: int = 32  # training batches the averaged weights' batch-norm statistics are recomputed on
    tta: bool = False  # test-time augmentation: average the logits of each image and its mirror image
    # Early stopping: end the run when the validation score has not improved for this many
    # epochs (the best epoch's weights are the ones kept, as always); None trains to the end.
    patience: int | None = None
    # balanced: weigh each image's loss by n / (classes x its class's count) (scikit-learn's
    # "balanced"), so that a rare class counts as much as a common one; single-label data only.
    class_weights: Literal["none", "balanced"] = "none"

    @property
    def sized_to_data(self) -> bool:
        """No length given (neither epochs nor max_iters): the run sizes it to its training
        split when it starts (train/setup.py, size_to_data)."""
        return self.epochs is None and self.max_iters is None


@dataclass
class OutputConfig:
    dir: str = "runs"  # run folders go below this
    name: str | None = None  # the run folder's name; default model-dataset-time
    plots: bool = True  # curves, confusion matrix and reliability diagram as PNGs in the run folder
    keep_last: int = 1  # epoch checkpoints kept besides best.pt
    # Experiment tracking besides history.csv: tensorboard (event files in the run folder, so
    # `tensorboard --logdir runs` shows every run), wandb or mlflow; rank 0 only.
    logger: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    log_every: int = 20  # steps between logged training figures (loss, rate, images/s)
    project: str = "reslab"  # wandb project / mlflow experiment
    tracking_uri: str | None = None  # mlflow: a tracking server or store (None: output.dir/mlflow.db)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from .runfs import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _choices() -> dict[str, tuple]:
    """``section.key`` -> allowed values, for every field typed with a ``Literal``."""
    choices = {}
    for section in dataclasses.fields(RunConfig):
        for key, hint in typing.get_type_hints(section.default_factory).items():
            literal = _literal(hint)
            if literal is not None:
                choices[f"{section.name}.{key}"] = typing.get_args(literal)
    return choices


def _literal(hint):
    """The ``Literal`` in a field's type (``Literal[...]`` or ``Literal[...] | None``), or None."""
    if typing.get_origin(hint) is typing.Literal:
        return hint
    return next((a for a in typing.get_args(hint) if typing.get_origin(a) is typing.Literal), None)


CHOICES = _choices()


# ---------------------------------------------------------------- building and overriding


def from_dict(data: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """A config from nested ``{section: {key: value}}``; unknown keys are refused by name."""
    config = base or RunConfig()
    if not isinstance(data, dict):
        raise ReslabError("a config must be a mapping of sections (model:, data:, train:, ...)")
    for section_name, values in data.items():
        _section(config, section_name)
        if not isinstance(values, dict):
            raise ReslabError(f"config section {section_name!r} must be a mapping of keys to values")
        _set(config, section_name, values)
    return config


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``[1, 2]``, ``null``, ``1e-3``)."""
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or "." not in path:
            raise ReslabError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=10)")
        section_name, key = path.strip().split(".", 1)
        section = _section(config, section_name)
        try:
            value = safe_yaml(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if isinstance(value, (bool, int, float)) and _is_text_field(section, key):
            value = text.strip()  # output.name=no is the name "no", not YAML's false
        _set(config, section_name, {key: value})
    return config


def load(source: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (a path, or the name of a shipped recipe), apply overrides, validate."""
    config = RunConfig()
    if source is not None:
        config = from_dict(_read_yaml(source), config)
    config = apply_overrides(config, overrides or [])
    validate(config)
    return config


def default_recipe(overrides: list[str]) -> str:
    """The recipe of a run given no --config: finetune where pretrained weights are named,
    else scratch (both sized to the data)."""
    pretrained = [item.partition("=")[2].strip() for item in overrides if item.startswith("model.pretrained=")]
    return "finetune" if pretrained and pretrained[-1] not in ("", "null", "none", "None") else "scratch"


# The YAML documents reslab ships, by kind: the folder under src/reslab/recipes/ and how an
# error names one.
SHIPPED = {"recipe": ("", "config"), "study": ("studies", "study"), "space": ("spaces", "search space")}


def shipped_names(kind: str = "recipe") -> list[str]:
    """The names of the shipped documents of ``kind`` (recipe, study or space)."""
    folder = resources.files("reslab") / "recipes" / SHIPPED[kind][0]
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_names() -> list[str]:
    return shipped_names("recipe")


def read_document(source: str | Path, kind: str) -> tuple[Any, str, Path | None]:
    """A YAML document of ``kind`` from a file, or a shipped one by name (``digits-depth``):
    its content, its default name (the file's stem or the name) and its path (None when
    shipped). Neither is one error line, with the closest shipped names."""
    if not isinstance(source, (str, Path)):
        raise ReslabError(f"a {SHIPPED[kind][1]} is named by a file or a shipped name, not {_shown(source)}")
    path = Path(source)
    if path.exists() or str(source).endswith((".yaml", ".yml")):  # a file: read_yaml_file says what is wrong
        return read_yaml_file(path, SHIPPED[kind][1]), path.stem, path
    shipped = resources.files("reslab") / "recipes" / SHIPPED[kind][0] / f"{source}.yaml"
    if not shipped.is_file():
        names = shipped_names(kind)
        close = difflib.get_close_matches(str(source), names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (shipped: {', '.join(names) or 'none'})"
        raise ReslabError(f"{SHIPPED[kind][1]} {str(source)!r} is neither a file nor a shipped {kind}{hint}")
    return safe_yaml(shipped.read_text()), str(source), None


class _PlainLoader(yaml.SafeLoader):
    """YAML without anchors and aliases (a config needs none, and a few hundred bytes of
    nested aliases expand into gigabytes), nested at most ``MAX_YAML_DEPTH`` deep, with
    integers of at most ``MAX_INT_CHARACTERS`` characters (Python refuses to read one of over
    4,300 digits, and ``0b``/sexagesimal forms have no limit at all)."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        if len(text) > MAX_INT_CHARACTERS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(text):,} characters (at most {MAX_INT_CHARACTERS})", node.start_mark)
        return super().construct_yaml_int(node)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in a reslab config")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_PlainLoader.add_constructor("tag:yaml.org,2002:int", _PlainLoader.construct_yaml_int)

MAX_YAML_DEPTH = 20
MAX_INT_CHARACTERS = 100  # a seed is 10 digits; no config number needs more than a few dozen


def safe_yaml(text: str):
    """``yaml.safe_load`` for config files: plain values, no aliases, bounded nesting."""
    return yaml.load(text, Loader=_PlainLoader)


MAX_YAML_BYTES = 1 << 20  # a config, study or space file is a few kilobytes


def read_yaml_file(path: Path, kind: str = "config"):
    """A YAML file's content (``safe_yaml``); an unreadable or invalid file is one error line
    naming ``kind`` (config, study, space). A file larger than any such document is refused
    unread."""
    from .runfs import read_capped

    raw = read_capped(path, f"{kind} file", MAX_YAML_BYTES)
    try:
        return safe_yaml(raw.decode())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ReslabError(f"{kind} file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # a timestamp such as 2001-13-45, which YAML's date reader refuses
        raise ReslabError(f"{kind} file {path} holds a value YAML cannot read: {str(exc)[:120]}") from None


def _shown(value: Any, limit: int = 60) -> str:
    """A value for an error line, cut to ``limit`` characters."""
    if _huge_int(value):  # repr would raise: Python writes out at most 4,300 digits
        return f"an integer of {value.bit_length():,} bits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _huge_int(value: Any) -> bool:
    return isinstance(value, int) and value.bit_length() > 4 * MAX_INT_CHARACTERS


def _read_yaml(source: str | Path) -> dict[str, Any]:
    return read_document(source, "recipe")[0] or {}


def _is_text_field(section, key: str) -> bool:
    hint = typing.get_type_hints(type(section)).get(key)
    literal = _literal(hint)
    if literal is not None:
        return all(isinstance(v, str) for v in typing.get_args(literal))
    return hint is str or (typing.get_origin(hint) is not None and str in typing.get_args(hint)
                           and not ({int, float, bool} & set(typing.get_args(hint))))


def _section(config: RunConfig, name: str):
    names = [f.name for f in dataclasses.fields(config)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; sections: {', '.join(names)}"
        raise ReslabError(f"unknown config section {name!r}{hint}")
    return getattr(config, name)


def _set(config: RunConfig, section_name: str, values: dict[str, Any]) -> None:
    """Set keys of one section, each checked by ``parse_fields`` (the one parser of every
    document's fields: the same types, bounds and wording as studies, spaces and launchers)."""
    section = getattr(config, section_name)
    setattr(config, section_name, parse_fields(type(section), values, section_name, base=section))


def _coerce(value: Any, hint, name: str) -> Any:
    """Check ``value`` against a field's type, accepting ints for floats and digits for ints."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ReslabError(f"config key '{name}' may not be empty")
    if optional:
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        text = "" if _huge_int(value) else str(value)
        whole = text.isascii() and text.isdigit() and len(text) <= MAX_INT_CHARACTERS  # "²".isdigit() too
        for candidate in (value, text) + ((int(text),) if whole else ()):
            if candidate in allowed and not isinstance(candidate, bool):
                return candidate
        raise ReslabError(f"config key '{name}' must be one of {', '.join(map(str, allowed))}, got {_shown(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0], name) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    type_name = getattr(hint, "__name__", str(hint))
    raise ReslabError(f"config key '{name}' must be {type_name}, got {_shown(value)}")


def config_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
                 least: int | None = None, most: int | None = None, convert: Callable[[Any], Any] | None = None,
                 null_is_default: bool = False) -> Any:
    """A dataclass field that says what ``parse_fields`` accepts beyond its type: numbers from
    ``least`` to ``most``; or ``convert``, which turns the value as written (None included)
    into the field's and raises ValueError("must be ...") for the shared wording; and, with
    ``null_is_default``, an empty key (``key:`` in YAML) taking the default."""
    checks = {"least": least, "most": most, "convert": convert, "null_is_default": null_is_default or None}
    return field(default=default, default_factory=default_factory,
                 metadata={name: value for name, value in checks.items() if value is not None})


def parse_fields(cls, data: Any, where: str, ignore_unknown: bool = False, base: Any = None):
    """A typed dataclass ``cls`` from a mapping: a section of another YAML or JSON document
    (a hub folder's config.json), or a whole document (a study, a space file's settings, a
    launcher: or robustness: section, with the command line's flags merged in over it). Each
    value is checked as a config key is (the same wording: ``config key 'where.key' must be
    ...``), floats finite, and as its ``config_field`` declares: bounds, a converter. A field
    typed with a dataclass is parsed the same way; one typed ``Any`` is taken as it is, for the
    caller to check. Unknown keys are refused by name with a hint, or left out with
    ``ignore_unknown`` (a document that another program writes, with keys of its own). With
    ``base`` (an instance of ``cls``), the keys not given keep its values."""
    if not isinstance(data, dict):
        raise ReslabError(f"config key '{where}' must be a mapping of keys to values, got {_shown(data)}"
                          if where else f"the document must be a mapping of keys to values, got {_shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in fields:
            if ignore_unknown:
                continue
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            prefix = f"{where}." if where else ""
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; it has {', '.join(fields)}"
            shown = key if len(str(key)) <= 40 else f"{str(key)[:40]}..."
            raise ReslabError(f"unknown config key '{prefix}{shown}'{hint}")
        name, hint, declared = f"{where}.{key}" if where else key, hints[key], fields[key].metadata
        options = (hint,) if typing.get_origin(hint) is list else (hint, *typing.get_args(hint))
        nested = next((a for a in options if dataclasses.is_dataclass(a)), None)  # X or X | None
        if value is None and declared.get("null_is_default"):
            continue
        if "convert" in declared:
            try:
                values[key] = declared["convert"](value)
            except ValueError as exc:
                raise ReslabError(f"config key '{name}' {exc}, got {_shown(value)}") from None
        elif hint is Any:
            values[key] = value
        elif nested is not None and (value is not None or nested is hint):
            values[key] = parse_fields(nested, value, name, ignore_unknown)
        else:
            values[key] = _coerce(value, hint, name)
            numbers = values[key] if isinstance(values[key], list) else [values[key]]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ReslabError(f"config key '{name}' must be a finite number, got {_shown(value)}")
        _check_bounds(values[key], declared, name)
    if base is not None:
        return dataclasses.replace(base, **values)
    missing = [f.name for f in fields.values() if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ReslabError(f"config key '{where + '.' if where else ''}{missing[0]}' is missing")
    return cls(**values)


def _check_bounds(value: Any, declared: typing.Mapping[str, Any], name: str) -> None:
    """A number, or each of a list's, within a field's ``least`` and ``most``."""
    least, most = declared.get("least"), declared.get("most")
    if value is None or (least is None and most is None):
        return
    for number in value if isinstance(value, list) else [value]:
        if (least is not None and number < least) or (most is not None and number > most):
            bounds = ([f"at least {least}"] if least is not None else []) + (
                [f"at most {_number_text(most)}"] if most is not None else [])
            raise ReslabError(f"config key '{name}' must be {' and '.join(bounds)}, got {_shown(value)}")


def _number_text(number: int) -> str:
    """A bound as people write it: 2**63-1 rather than its 19 digits."""
    if number > 2**16 and (number + 1) & number == 0:
        return f"2**{number.bit_length()}-1"
    return str(number)


# ---------------------------------------------------------------- validation


def validate(config: RunConfig) -> RunConfig:
    for section in dataclasses.fields(config):
        for key, value in vars(getattr(config, section.name)).items():
            numbers = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ReslabError(f"config key '{section.name}.{key}' must be a finite number, got {_shown(value)}")
    for path, allowed in CHOICES.items():
        section_name, key = path.split(".")
        value = getattr(getattr(config, section_name), key)
        if value not in allowed:
            raise ReslabError(f"config key '{path}' must be one of {', '.join(allowed)}, got {_shown(value)}")
    checks = [
        ("optim.lr", 0 < config.optim.lr < float("inf"), "must be a positive number"),
        ("train.seed", 0 <= config.train.seed < 2**32, "must be in [0, 2**32)"),
        ("data.split_seed", 0 <= config.data.split_seed < 2**32, "must be in [0, 2**32)"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, "must not be negative"),
        ("optim.momentum", 0 <= config.optim.momentum < 1, "must be in [0, 1)"),
        ("optim.betas", len(config.optim.betas) == 2 and all(0 <= b < 1 for b in config.optim.betas),
         "must be two numbers in [0, 1)"),
        ("optim.backbone_lr", config.optim.backbone_lr is None or config.optim.backbone_lr >= 0,
         "must not be negative"),
        ("train.batch_size", config.train.batch_size >= 1, "must be at least 1"),
        ("train.eval_batch_size", config.train.eval_batch_size >= 1, "must be at least 1"),
        ("train.epochs", config.train.epochs is None or config.train.epochs >= 1, "must be at least 1"),
        ("train.max_iters", config.train.max_iters is None or config.train.max_iters >= 1, "must be at least 1"),
        ("train.time_limit", config.train.time_limit is None or 0 < config.train.time_limit < float("inf"),
         "must be a positive number of seconds"),
        ("train.patience", config.train.patience is None or config.train.patience >= 1, "must be at least 1"),
        ("train.label_smoothing", 0 <= config.train.label_smoothing < 1, "must be in [0, 1)"),
        ("train.ema", config.train.ema is None or 0 < config.train.ema < 1, "must be in (0, 1)"),
        ("train.ema_bn_batches", config.train.ema_bn_batches >= 1, "must be at least 1"),
        ("train.threads", config.train.threads is None or config.train.threads >= 1, "must be at least 1"),
        ("optim.lr_reference_batch", config.optim.lr_reference_batch is None or config.optim.lr_reference_batch >= 1,
         "must be at least 1"),
        ("data.val_size", config.data.val_size >= 0, "must not be negative"),
        ("data.train_size", config.data.train_size is None or 0 < config.data.train_size < float("inf"),
         "must be a positive fraction or count"),
        ("data.image_size", config.data.image_size is None or config.data.image_size >= 1, "must be at least 1"),
        ("data.resize_size", config.data.resize_size is None or config.data.resize_size >= 1, "must be at least 1"),
        ("data.workers", config.data.workers is None or config.data.workers >= 0, "must not be negative"),
        ("augment.random_resized_crop", config.augment.random_resized_crop is None
         or 0 <= config.augment.random_resized_crop <= 1, "must be in [0, 1]"),
        ("augment.color_jitter", config.augment.color_jitter >= 0, "must not be negative"),
        ("augment.random_erasing", 0 <= config.augment.random_erasing <= 1, "must be in [0, 1]"),
        ("augment.mixup", config.augment.mixup >= 0, "must not be negative"),
        ("augment.cutmix", config.augment.cutmix >= 0, "must not be negative"),
        ("train.threshold", 0 < config.train.threshold < 1, "must be in (0, 1)"),
        ("data.channels", config.data.channels in (None, 1, 3), "must be 1 or 3"),
        ("model.unfreeze_epoch", config.model.unfreeze_epoch is None or config.model.unfreeze_epoch >= 1,
         "must be at least 1"),
        ("data.test_size", config.data.test_size > 0, "must be positive"),
        ("augment.crop_padding", config.augment.crop_padding is None or config.augment.crop_padding >= 0,
         "must not be negative"),
        ("augment.rotation", 0 <= config.augment.rotation <= 180, "must be in [0, 180] degrees"),
        ("augment.scale", 0 <= config.augment.scale < 1, "must be in [0, 1)"),
        ("schedule.gamma", 0 < config.schedule.gamma <= 1, "must be in (0, 1]"),
        ("schedule.warmup_iters", config.schedule.warmup_iters >= 0, "must not be negative"),
        ("schedule.warmup_lr", config.schedule.warmup_lr > 0, "must be positive"),
        ("schedule.milestones", list(config.schedule.milestones) == sorted(config.schedule.milestones),
         "must be increasing"),
        ("output.keep_last", config.output.keep_last >= 1, "must be at least 1"),
        ("output.log_every", config.output.log_every >= 1, "must be at least 1"),
        ("train.accumulate", config.train.accumulate >= 1, "must be at least 1"),
        ("train.accumulate", config.train.batch_size % max(config.train.accumulate, 1) == 0,
         f"must divide train.batch_size ({config.train.batch_size})"),
        ("optim.clip_grad_norm", config.optim.clip_grad_norm is None or config.optim.clip_grad_norm > 0,
         "must be positive"),
    ]
    for path, ok, message in checks:
        if not ok:
            section_name, key = path.split(".")
            raise ReslabError(f"config key '{path}' {message}, got "
                              f"{_shown(getattr(getattr(config, section_name), key))}")
    freeze = config.model.freeze
    stages = freeze.isascii() and freeze.isdigit() and len(freeze) <= 4  # "²".isdigit() too, int() refuses it
    if freeze not in ("none", "backbone") and not stages:
        raise ReslabError(f"config key 'model.freeze' must be none, backbone or a number of stages, "
                          f"got {_shown(freeze)}")
    if config.schedule.name == "onecycle" and config.schedule.warmup != "none":
        raise ReslabError("schedule.warmup does not apply to schedule.name=onecycle, which warms up by itself "
                          "(its first 30% of steps); set schedule.warmup=none")
    if config.data.name in FILE_DATASETS and config.data.channels == 1:
        raise ReslabError(f"data.channels=1: {config.data.name} images are read as RGB; leave data.channels empty or 3")
    if config.train.precision == "fp16" and config.train.device == "cpu":
        raise ReslabError("config key 'train.precision' fp16 needs a GPU; use bf16 on the CPU")
    if config.train.compile_mode != "default" and not config.train.compile:
        raise ReslabError(f"train.compile_mode={config.train.compile_mode} applies only with train.compile=true")
    run_name = config.output.name
    if run_name is not None and ("/" in run_name or "\0" in run_name or run_name in ("", ".", "..")
                                 or len(run_name.encode()) > 200):
        raise ReslabError(f"config key 'output.name' must be a plain folder name of at most 200 bytes, "
                          f"got {_shown(run_name)}")
    return config
