"""CIFAR ResNets of depth 6n+2 and their plain twins (He et al. 2016 §4.2)."""

import pytest
import torch

from reslab import ReslabError, create_model, list_models
from reslab.models.summary import count_macs, count_parameters

# REFERENCE.md: exact counts with option-A shortcuts
PAPER_COUNTS = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
                "resnet110": 1_727_962, "resnet1202": 19_421_274}


@pytest.mark.parametrize("name,count", PAPER_COUNTS.items())
def test_parameter_counts_equal_the_paper(name, count):
    assert count_parameters(create_model(name))["parameters"] == count


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twin_has_the_same_parameters_and_keys(depth):
    residual, plain = create_model(f"resnet{depth}"), create_model(f"plain{depth}")
    assert list(residual.state_dict()) == list(plain.state_dict())
    assert [v.shape for v in residual.state_dict().values()] == [v.shape for v in plain.state_dict().values()]


def test_plain_and_residual_differ_only_by_the_shortcut():
    torch.manual_seed(0)
    residual = create_model("resnet20").eval()
    plain = create_model("plain20").eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 3, 32, 32)
    # With the same weights, outputs differ; after zeroing the identity they agree.
    assert not torch.allclose(residual(x), plain(x))
    for block in residual.modules():
        if hasattr(block, "residual"):
            block.residual = False
    assert torch.allclose(residual(x), plain(x))


def test_a_plain_net_refuses_a_shortcut_option():
    with pytest.raises(ReslabError, match="plain20 has no shortcuts"):
        create_model("plain20", shortcut="B")


def test_option_b_adds_projections_only_where_shapes_change():
    a, b = create_model("resnet20", shortcut="A"), create_model("resnet20", shortcut="B")
    extra = count_parameters(b)["parameters"] - count_parameters(a)["parameters"]
    # two projections: 16->32 and 32->64 1x1 convs with BN
    assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert b.layer2[0].downsample is not None and b.layer2[1].downsample is None
    assert b.layer1[0].downsample is None


def test_option_a_shortcut_is_subsampled_identity_with_zero_channels():
    block = create_model("resnet20").layer2[0]
    x = torch.randn(1, 16, 8, 8)
    out = block.downsample(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("shape,classes", [((3, 32, 32), 10), ((1, 28, 28), 7), ((1, 8, 8), 100)])
def test_output_shape_for_any_channels_and_classes(shape, classes):
    model = create_model("resnet20", num_classes=classes, in_channels=shape[0])
    assert model(torch.randn(3, *shape)).shape == (3, classes)


def test_feature_map_sizes_per_stage():
    model = create_model("resnet20").eval()
    x = model.forward_stem(torch.randn(1, 3, 32, 32))
    sizes = []
    for stage in model.stages().values():
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_any_valid_depth_builds_and_invalid_depths_are_refused():
    assert len(create_model("resnet38").layer1) == 6
    assert len(create_model("cifar_resnet26").layer1) == 4  # resnet26 is timm's ImageNet net (test_models_zoo.py)
    assert len(create_model("plain14").layer3) == 2
    for bad in ("resnet21", "plain100", "resnet2"):
        with pytest.raises(ReslabError, match="6n\\+2"):
            create_model(bad)


def test_unknown_model_names_suggest_close_ones():
    with pytest.raises(ReslabError, match="resnet20"):
        create_model("resnt20")


def test_he_initialisation():
    torch.manual_seed(0)
    conv = create_model("resnet56").layer3[0].conv2
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_registry_lists_the_cifar_family():
    names = list_models()
    for name in [*PAPER_COUNTS, "plain20", "plain110"]:
        assert name in names


def test_macs_of_resnet20():
    # 3x3 convs dominate: about 40.6M multiply-accumulates per 32x32 image
    macs = count_macs(create_model("resnet20"), (3, 32, 32))
    assert 40e6 < macs < 41.5e6


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("resnet20")
    x = torch.randn(4, 3, 32, 32)
    model.eval()  # BN in eval so the recomputation sees identical statistics
    model(x).sum().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for before, after in zip(plain_grads, (p.grad for p in model.parameters())):
        assert torch.allclose(before, after, atol=1e-6)


def test_exact_counts_round_to_table_6s_printed_millions():
    from reslab.report.paper import CIFAR10_TABLE6_PARAMS_M

    for name, millions in CIFAR10_TABLE6_PARAMS_M.items():
        digits = 2 if millions < 1 else 1
        assert round(PAPER_COUNTS[name] / 1e6, digits) == millions, name


# ---------------------------------------------------------------- sizes bounded from the family, before building


def test_an_absurd_wide_resnet_is_refused_from_its_name_before_allocating_it():
    import time

    from reslab.models.registry import check_input_size

    start = time.perf_counter()
    with pytest.raises(ReslabError, match="WRN-9994-64 would have about 660 billion parameters"):
        create_model("wrn9994_64")
    with pytest.raises(ReslabError, match="WRN-9994-64"):  # also where only the name is checked (hub folders)
        check_input_size("wrn9994_64", (32, 32))
    assert time.perf_counter() - start < 1
    check_input_size("wrn28_64", (32, 32))  # 1.6 billion: under the bound, as documented


@pytest.mark.parametrize("name,largest", [("resnet20", 512), ("wrn16_8", 512), ("preact_resnet164", 512),
                                          ("resnext29_8x64d", 512), ("resnet50", 1024), ("resnet50v2", 1024)])
def test_each_family_bounds_the_input_side(name, largest):
    from reslab.models.registry import check_input_size

    check_input_size(name, (largest, largest // 2))
    with pytest.raises(ReslabError, match=f"{name} takes images of at most {largest} pixels a side"):
        check_input_size(name, (8, largest + 1))


def test_a_checkpoint_meta_asking_for_a_larger_input_or_an_option_clash_builds_nothing():
    from reslab.models import model_from_meta

    meta = {"model": "resnet8", "num_classes": 10, "in_channels": 3, "image_size": [4096, 4096], "model_options": {}}
    with pytest.raises(ReslabError, match="at most 512 pixels"):
        model_from_meta(meta)
    with pytest.raises(ReslabError, match="'in_channels' is not an option"):
        model_from_meta({**meta, "image_size": [32, 32], "model_options": {"in_channels": 5}})
