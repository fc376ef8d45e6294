"""Freezing and per-part learning rates for transfer learning.

A model's top-level modules fall into four parts, in registration order: the stem (before
the first stage), the stages (``model.stage_names``), the tail (after the last stage, e.g.
a final BN) and the head (``model.head_names`` if the model defines it, else ``fc``).

``freeze(model, mode)`` with mode:

* ``"none"``: everything trains (fine-tuning);
* ``"backbone"``: only the head trains;
* an int K: the head, the tail and the last K stages train; K > number of stages also
  unfreezes the stem (the same as "none"); K = 0 is "backbone".

Frozen BN layers must also stop updating their running statistics, which ``model.train()``
would switch back on. ``freeze`` therefore hooks each frozen BN so that it is put in eval
mode before every forward pass: the training loop needs no extra call, and
``freeze(model, "none")`` removes the hooks. ``frozen_batchnorms(model)`` lists them.
"""

from __future__ import annotations

from torch import nn

from ..errors import ReslabError

_HOOK_ATTRIBUTE = "_reslab_frozen_bn_hook"


def head_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "head_names", ("fc",)))


def model_parts(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The model's top-level modules by part: ``stem``, ``stages``, ``tail``, ``head``."""
    stage_names = tuple(getattr(model, "stage_names", ()))
    if not stage_names:
        raise ReslabError(f"{type(model).__name__} has no named stages; freezing needs a reslab model")
    heads = head_names(model)
    parts: dict[str, list[tuple[str, nn.Module]]] = {"stem": [], "stages": [], "tail": [], "head": []}
    seen_stages = 0
    for name, module in model.named_children():
        if name in heads:
            parts["head"].append((name, module))
        elif name in stage_names:
            parts["stages"].append((name, module))
            seen_stages += 1
        else:
            parts["stem" if seen_stages == 0 else "tail"].append((name, module))
    return parts


def trainable_modules(model: nn.Module, mode: str | int) -> list[tuple[str, nn.Module]]:
    """The top-level modules that train under ``mode`` (see the module docstring)."""
    parts = model_parts(model)
    if isinstance(mode, str) and mode.isdigit():  # "2" from a command line or YAML
        mode = int(mode)
    if mode == "none":
        return parts["stem"] + parts["stages"] + parts["tail"] + parts["head"]
    if mode == "backbone":
        return parts["head"]
    if isinstance(mode, bool) or not isinstance(mode, int) or mode < 0:
        raise ReslabError(
            f"freeze mode must be 'none', 'backbone' or a number of last stages to train (0 or more), got {mode!r}"
        )
    if mode == 0:
        return parts["head"]
    stages = parts["stages"][-mode:]
    stem = parts["stem"] if mode > len(parts["stages"]) else []
    return stem + stages + parts["tail"] + parts["head"]


def _keep_in_eval(module: nn.Module, _inputs) -> None:
    module.train(False)


def freeze(model: nn.Module, mode: str | int = "backbone") -> nn.Module:
    """Set ``requires_grad`` for ``mode`` and keep the frozen BN layers in eval mode."""
    trainable = {id(m) for _, top in trainable_modules(model, mode) for m in top.modules()}
    for module in model.modules():
        hook = getattr(module, _HOOK_ATTRIBUTE, None)
        if hook is not None:
            hook.remove()
            delattr(module, _HOOK_ATTRIBUTE)
    for module in model.modules():
        if module is model:
            continue
        frozen = id(module) not in trainable
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(not frozen)
        if frozen and isinstance(module, nn.modules.batchnorm._BatchNorm):
            setattr(module, _HOOK_ATTRIBUTE, module.register_forward_pre_hook(_keep_in_eval))
            module.eval()
    return model


def frozen_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BN layers that ``freeze`` keeps in eval mode."""
    return [name for name, m in model.named_modules() if getattr(m, _HOOK_ATTRIBUTE, None) is not None]


def parameter_groups(
    model: nn.Module,
    backbone_lr: float,
    head_lr: float,
    weight_decay: float = 0.0,
    decay_norm_and_bias: bool = True,
    include_frozen: bool = False,
) -> list[dict]:
    """Optimizer parameter groups: backbone and head with their own learning rates.

    Only parameters that require grad are included, unless ``include_frozen`` (for a
    backbone unfrozen later in training: frozen parameters get no gradient, so optimizers
    leave them alone until then). By default every parameter is decayed, as in the ResNet
    paper (``optim.decay_norm_and_bias``, the same default); ``decay_norm_and_bias=False``
    exempts BN weights/biases and all biases (every parameter with fewer than 2 dimensions).
    Each group carries a ``name`` ("backbone", "backbone_no_decay", "head", "head_no_decay").
    """
    head_ids = {id(p) for _, m in model_parts(model)["head"] for p in m.parameters()}
    buckets: dict[str, list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad and not include_frozen:
            continue
        part = "head" if id(parameter) in head_ids else "backbone"
        no_decay = parameter.ndim < 2 and not decay_norm_and_bias
        buckets.setdefault(part + ("_no_decay" if no_decay else ""), []).append(parameter)
    groups = []
    for name in ("backbone", "backbone_no_decay", "head", "head_no_decay"):
        if name in buckets:
            groups.append(
                {
                    "name": name,
                    "params": buckets[name],
                    "lr": head_lr if name.startswith("head") else backbone_lr,
                    "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay,
                }
            )
    return groups
