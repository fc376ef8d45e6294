"""The model zoo: exact sizes, shapes, torchvision equivalence, stride placement, freezing,
and what a model name builds or refuses."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reslab.errors import ReslabError
from reslab.models import create_model, describe_model
from reslab.models.imagenet import resnet50
from reslab.models.preact import resnet50v2, resnet101v2, resnet152v2
from reslab.models.report000 import SameMaxPool2d
from reslab.models.summary import count_parameters
from reslab.models.transfer import freeze, frozen_batchnorms, parameter_groups

# name -> (num_classes, parameters). ImageNet ones are torchvision's; CIFAR ones as stated.
PARAMETER_COUNTS = {
    "resnet18": (1000, 11_689_512),
    "resnet34": (1000, 21_797_672),
    "resnet50": (1000, 25_557_032),
    "resnet101": (1000, 44_549_160),
    "resnet152": (1000, 60_192_808),
    "plain18": (1000, 11_515_688),  # resnet18 less its three projection shortcuts
    "plain34": (1000, 21_623_848),
    "resnext50_32x4d": (1000, 25_028_904),
    "resnext29_8x64d": (10, 34_426_698),  # Xie et al. 2017, Table 7: 34.4M
    "resnext29_16x64d": (10, 68_155_210),  # 68.1M in the paper
    "wrn28_10": (10, 36_479_194),
    "wrn16_8": (10, 10_961_370),
    "wrn40_4": (10, 8_949_210),
    "preact_resnet164": (10, 1_703_258),  # He et al. 2016b: 1.7M
    "preact_resnet1001": (10, 10_327_706),  # 10.2M in the paper = its convs and fc alone, 10,178,490
    "resnet50v2": (1000, 25_568_360),
    "resnet101v2": (1000, 44_577_896),
    "resnet152v2": (1000, 60_236_904),
    "resnet152v2_report000": (10, 58_880_842),
}

# Keras's "Total params" (parameters + BN moving mean and variance), with and without the top.
KERAS_TOTALS = {
    resnet50v2: (23_564_800, 25_613_800, 45_440),
    resnet101v2: (42_626_560, 44_675_560, 97_664),
    resnet152v2: (58_331_648, 60_380_648, 143_744),
}


def on_meta(builder, *args, **kwargs) -> nn.Module:
    """Build without allocating or initialising weights: counting needs only the shapes."""
    with torch.device("meta"):
        return builder(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_count_is_exact(name):
    num_classes, expected = PARAMETER_COUNTS[name]
    model = on_meta(create_model, name, num_classes=num_classes)
    assert count_parameters(model)["parameters"] == expected


@pytest.mark.parametrize("builder", list(KERAS_TOTALS), ids=lambda b: b.__name__)
def test_resnet_v2_counts_equal_keras_with_and_without_top(builder):
    without_top, with_top, moving_statistics = KERAS_TOTALS[builder]
    model = on_meta(builder, num_classes=0)
    counts = count_parameters(model)
    assert counts["keras_total"] == without_top
    assert counts["bn_statistics"] == moving_statistics
    with torch.device("meta"):
        model.reset_classifier(1000)
    assert count_parameters(model)["keras_total"] == with_top


def test_report000_counts_as_keras_reports_them():
    model = on_meta(create_model, "resnet152v2_report000", num_classes=10)
    counts = count_parameters(model)
    assert counts["keras_total"] == 59_024_586
    assert counts["trainable"] == 58_880_842
    assert counts["keras_non_trainable"] == 143_744
    head_conv = model.head.conv1
    assert sum(p.numel() for p in head_conv.parameters()) == 589_856


def test_report000_keeps_a_1x1_map_through_its_head_and_resets_its_last_dense():
    model = create_model("resnet152v2_report000", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 2048, 1, 1)
        assert model.forward_head(features).shape == (2, 10)
        assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    model.reset_classifier(100)
    assert model.get_classifier().out_features == 100
    with torch.no_grad():
        assert model(x).shape == (2, 100)


def test_same_max_pool_keeps_a_1x1_map_and_halves_rounding_up():
    pool = SameMaxPool2d(2)
    assert pool(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)
    x = torch.arange(25.0).reshape(1, 1, 5, 5) - 100  # negative: padding must not win
    out = pool(x)
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 2, 2] == x[0, 0, 4, 4]
    assert out[0, 0, 0, 0] == x[0, 0, 1, 1]


# --- shapes and the shared API ---------------------------------------------------------

SHAPES = [
    # name, input size, feature channels, feature map side
    ("resnet18", 64, 512, 2),
    ("plain18", 64, 512, 2),
    ("resnet50", 64, 2048, 2),
    ("resnext29_8x64d", 32, 1024, 8),
    ("wrn16_8", 32, 512, 8),
    ("preact_resnet164", 32, 256, 8),
    ("resnet50v2", 64, 2048, 2),
]


@pytest.mark.parametrize("name,size,channels,side", SHAPES)
def test_features_and_logits_have_the_expected_shapes(name, size, channels, side):
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, channels, side, side)
        assert model.forward_head(features).shape == (2, 7)
    assert model.num_features == channels


def test_in_channels_changes_only_the_first_conv():
    rgb, gray = create_model("resnet18", in_channels=3), create_model("resnet18", in_channels=1)
    assert gray.conv1.weight.shape == (64, 1, 7, 7)
    rgb_shapes = {k: v.shape for k, v in rgb.state_dict().items() if k != "conv1.weight"}
    assert rgb_shapes == {k: v.shape for k, v in gray.state_dict().items() if k != "conv1.weight"}
    assert gray.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 1000)  # ImageNet nets: 1,000 classes


def test_stage_names_are_torchvision_and_keras_ones():
    assert list(create_model("resnet18").stages()) == ["layer1", "layer2", "layer3", "layer4"]
    assert list(resnet50v2(num_classes=0).stages()) == ["conv2", "conv3", "conv4", "conv5"]
    assert list(create_model("wrn16_8").stages()) == ["layer1", "layer2", "layer3"]


def test_grad_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    model = create_model("wrn16_8").eval()
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    reference.sum().backward()
    grad = model.conv1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(model.conv1.weight.grad, grad)


def test_wide_and_preact_depth_patterns_build_any_valid_depth_and_reject_others():
    model = create_model("wrn22_2")
    assert count_parameters(model)["parameters"] > 0
    assert len(model.layer1) == 3  # (22 - 4) / 6
    assert len(create_model("preact_resnet56").layer1) == 6  # (56 - 2) / 9
    with pytest.raises(ReslabError, match="6n\\+4"):
        create_model("wrn27_2")
    with pytest.raises(ReslabError, match="9n\\+2"):
        create_model("preact_resnet57")


def test_wide_resnet_dropout_is_active_only_in_training():
    model = create_model("wrn16_8", dropout=0.3)
    assert model.layer1[0].dropout.p == 0.3
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


# --- torchvision equivalence -----------------------------------------------------------


def _randomize_bn_statistics(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong BN mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_logits(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=10)
    _randomize_bn_statistics(reference)
    model = create_model(name, num_classes=10)
    model.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_paper_stride_placement_differs_from_v15_only_in_where_the_stride_is():
    v15, paper = resnet50(num_classes=10), resnet50(num_classes=10, stride_in="1x1")
    paper.load_state_dict(v15.state_dict(), strict=True)  # same keys, same shapes
    for stage in ("layer2", "layer3", "layer4"):
        assert getattr(v15, stage)[0].conv1.stride == (1, 1)
        assert getattr(v15, stage)[0].conv2.stride == (2, 2)
        assert getattr(paper, stage)[0].conv1.stride == (2, 2)
        assert getattr(paper, stage)[0].conv2.stride == (1, 1)
        assert getattr(paper, stage)[0].downsample[0].stride == (2, 2)
    v15.eval()
    paper.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert paper.forward_features(x).shape == v15.forward_features(x).shape
        assert not torch.allclose(paper(x), v15(x))
    with pytest.raises(ReslabError, match="stride_in"):
        resnet50(stride_in="both")


def test_plain_nets_have_no_shortcuts():
    model = create_model("plain34")
    blocks = [b for stage in model.stages().values() for b in stage]
    assert all(not b.residual and b.downsample is None for b in blocks)


# --- freezing and learning-rate groups -------------------------------------------------


def _bn_statistics(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix) and "running" in k}


def _train_step(model: nn.Module) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()  # must not bring frozen BN layers back to training mode
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_backbone_freezing_trains_only_the_head_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = freeze(create_model("resnet18", num_classes=10), "backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_step(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k]) and "num_batches" not in k}
    assert changed == {"fc.weight", "fc.bias"}
    assert "layer1.0.bn1" in frozen_batchnorms(model)


def test_unfreezing_the_last_stage_trains_it_and_its_bn_statistics():
    torch.manual_seed(0)
    model = freeze(create_model("resnet18", num_classes=10), 1)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("layer4", "fc"))}
    layer4_stats = _bn_statistics(model, "layer4")
    head_before = model.fc.weight.detach().clone()
    _train_step(model)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen_before.items())
    assert not torch.equal(model.fc.weight, head_before)
    assert any(not torch.equal(v, after[k]) for k, v in layer4_stats.items())
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert not any(p.requires_grad for p in model.layer3.parameters())


def test_freeze_none_makes_everything_trainable_again_and_drops_the_bn_hooks():
    model = freeze(create_model("resnet18"), "backbone")
    freeze(model, "none")
    assert all(p.requires_grad for p in model.parameters())
    assert frozen_batchnorms(model) == []
    model.train()
    assert model.layer1[0].bn1.training


def test_report000_backbone_freezing_trains_its_whole_conv_head():
    model = freeze(on_meta(create_model, "resnet152v2_report000"), "backbone")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head", "fc"}
    counts = count_parameters(model)
    assert counts["trainable"] == 58_880_842 - 58_187_904  # the head: 692,938


def test_bad_freeze_mode_is_a_reslab_error():
    with pytest.raises(ReslabError, match="freeze mode"):
        freeze(create_model("resnet18"), "some")


def test_parameter_groups_split_backbone_and_head_and_spare_bn_and_bias_from_decay():
    model = freeze(create_model("resnet18", num_classes=10), 2)
    groups = {g["name"]: g for g in parameter_groups(model, backbone_lr=0.01, head_lr=0.1, weight_decay=5e-4,
                                                     decay_norm_and_bias=False)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["head"]["params"] == [model.fc.weight] and groups["head"]["lr"] == 0.1
    assert groups["head_no_decay"]["params"] == [model.fc.bias] and groups["head_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["lr"] == 0.01 and groups["backbone"]["weight_decay"] == 5e-4
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len(grouped) == sum(p.requires_grad for p in model.parameters())
    assert all(p.ndim < 2 for p in groups["backbone_no_decay"]["params"])
    torch.optim.SGD(list(groups.values()), lr=0.1)  # a valid optimizer specification


# --- what a name builds ----------------------------------------------------------------


def test_imagenet_names_default_to_1000_classes_and_cifar_names_to_10():
    assert count_parameters(create_model("resnet50"))["parameters"] == 25_557_032
    assert create_model("resnet20").fc.out_features == 10


@pytest.mark.parametrize("name", ["resnet26", "resnet200"])
def test_names_that_mean_an_imagenet_net_in_timm_are_not_quietly_cifar_nets(name):
    with pytest.raises(ReslabError, match=f"timm's ImageNet.*cifar_{name}"):
        create_model(name)
    depth = int(name.removeprefix("resnet"))
    assert describe_model(f"cifar_{name}") == f"CIFAR ResNet, depth {depth} = 6*{(depth - 2) // 6}+2"
    assert create_model(f"cifar_{name}").fc.out_features == 10


@pytest.mark.parametrize("name, message", [
    ("resnet600002", "more than 4 digits"), ("resnet" + "9" * 5000, "at most 64 characters"),
    ("resnet\N{FULLWIDTH DIGIT TWO}\N{FULLWIDTH DIGIT ZERO}", "unknown model"),
])
def test_model_names_that_ask_too_much_or_are_not_ascii_are_refused(name, message):
    with pytest.raises(ReslabError, match=message):
        create_model(name)
