"""The published figures reports are held against (../shared/REFERENCE.md), as data.

Errors are in percent, as the papers print them. ``paper_error(model, dataset)`` answers
the report's "paper error" column: He et al.'s own number for the same net on the same
dataset, or None where the paper gives none (plain CIFAR nets are only plotted in
Fig. 6; digits and MNIST are not in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    error: float  # percent: what the table prints (for ResNet-110: the best of 5 runs)
    source: str
    mean: float | None = None  # percent, when the paper also gives a mean over runs
    std: float | None = None
    top5: float | None = None  # ImageNet top-5 error, percent
    note: str = ""

    @property
    def comparable(self) -> float:
        """The figure to set against a mean over seeds: the paper's mean where it gives one."""
        return self.mean if self.mean is not None else self.error


HE2016 = "He et al. 2016, Table 6"
HE2016_IMAGENET = "He et al. 2016, Tables 3-4 (10-crop)"
HE2016_PREACT = "He et al. 2016b, Identity Mappings"
AKAMASTER = "akamaster/pytorch_resnet_cifar10"

# He et al. 2016, Table 6: CIFAR-10 test error with augmentation, option A shortcuts.
CIFAR10_TABLE6 = {
    "resnet20": Reference(8.75, HE2016),
    "resnet32": Reference(7.51, HE2016),
    "resnet44": Reference(7.17, HE2016),
    "resnet56": Reference(6.97, HE2016),
    "resnet110": Reference(6.43, HE2016, mean=6.61, std=0.16, note="best of 5 runs; mean 6.61 ± 0.16"),
    "resnet1202": Reference(7.93, HE2016, note="overfits: worse than ResNet-110"),
}

# Table 6's parameter counts as printed (millions); the exact counts are tested in the models.
CIFAR10_TABLE6_PARAMS_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
                           "resnet110": 1.7, "resnet1202": 19.4}

# He et al. 2016b: pre-activation bottleneck ResNets, CIFAR-10 and CIFAR-100 test error.
PREACT = {
    ("preact_resnet164", "cifar10"): Reference(5.46, HE2016_PREACT),
    ("preact_resnet164", "cifar100"): Reference(24.33, HE2016_PREACT),
    ("preact_resnet1001", "cifar10"): Reference(4.92, HE2016_PREACT, note="4.62 with batch 64"),
    ("preact_resnet1001", "cifar100"): Reference(22.71, HE2016_PREACT),
}

# He et al. 2016: ImageNet validation, 10-crop testing, top-1 / top-5 error.
IMAGENET = {
    "plain18": Reference(27.94, HE2016_IMAGENET),
    "resnet18": Reference(27.88, HE2016_IMAGENET),
    "plain34": Reference(28.54, HE2016_IMAGENET, top5=10.02),
    "resnet34": Reference(24.52, HE2016_IMAGENET, top5=7.46, note="option B shortcuts"),
    "resnet50": Reference(22.85, HE2016_IMAGENET, top5=6.71),
    "resnet101": Reference(21.75, HE2016_IMAGENET, top5=6.05),
    "resnet152": Reference(21.43, HE2016_IMAGENET, top5=5.71),
}

# The widely used PyTorch reproduction: 200 epochs, lr 0.1 /10 at epochs 100 and 150,
# selected on the test set, no 45k/5k split.
AKAMASTER_CIFAR10 = {
    "resnet20": Reference(8.27, AKAMASTER),
    "resnet32": Reference(7.37, AKAMASTER),
    "resnet44": Reference(6.90, AKAMASTER),
    "resnet56": Reference(6.61, AKAMASTER),
    "resnet110": Reference(6.32, AKAMASTER),
    "resnet1202": Reference(6.18, AKAMASTER),
}


def paper_error(model: str, dataset: str) -> Reference | None:
    """He et al.'s error for ``model`` on ``dataset``, or None where the paper has none."""
    if dataset == "cifar10" and model in CIFAR10_TABLE6:
        return CIFAR10_TABLE6[model]
    if (model, dataset) in PREACT:
        return PREACT[(model, dataset)]
    if dataset == "imagenet" and model in IMAGENET:
        return IMAGENET[model]
    return None


def reference_error(model: str, dataset: str) -> Reference | None:
    """The reference reproduction's error (akamaster), for CIFAR-10 ResNets only."""
    return AKAMASTER_CIFAR10.get(model) if dataset == "cifar10" else None
