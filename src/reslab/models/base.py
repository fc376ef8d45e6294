"""The model API every reslab network shares (after timm's ``forward_features`` /
``forward_head`` split): the split is what makes new heads, freezing and feature
extraction the same code for every family."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn


class ResLabModel(nn.Module):
    """Base class: subclasses build ``self.stage_names`` stages and a ``self.fc`` head.

    ``forward_features`` returns the last feature map (N, C, H, W); ``forward_head``
    pools it and applies the classifier.
    """

    stage_names: tuple[str, ...] = ()
    num_features: int = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` outputs."""
        old = self.get_classifier()
        device = next(self.parameters()).device
        self.fc = nn.Linear(self.num_features, num_classes).to(device)
        if isinstance(old, nn.Linear):
            self.fc.to(old.weight.dtype)
        self.num_classes = num_classes

    def stages(self) -> dict[str, nn.Module]:
        """The stages by name, input side first (``stem`` first when there is one)."""
        return {name: getattr(self, name) for name in self.stage_names}


def init_he(module: nn.Module) -> None:
    """He (Kaiming-normal, fan_out) initialisation of convs, BN to identity, as in He et al. 2015."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class StagedModel(ResLabModel):
    """A stem, named stages and an optional final layer, with per-block activation
    checkpointing as an option (``set_grad_checkpointing``) for very deep nets."""

    grad_checkpointing: bool = False

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them:
        memory per stage falls to its block inputs, for about one more forward pass of time."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for name in self.stage_names:
            stage = getattr(self, name)
            if self.grad_checkpointing and torch.is_grad_enabled():
                for block in stage:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = stage(x)
        return self.forward_final(x)
