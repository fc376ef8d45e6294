"""Transfer learning through the training loop: pretrained weights, frozen backbones,
unfreezing, separate learning rates, input resizing."""

import pytest
import torch
import torchvision

from reslab import ReslabError
from reslab.checkpoint import load_checkpoint
from reslab.data.normalization import IMAGENET_STATS
from reslab.train.loop import train

from conftest import quick_config

pytestmark = pytest.mark.numerics  # outputs compared across kernels: run with both ISAs


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def transfer_config(tmp_path, weights, *overrides):
    return quick_config(tmp_path, "model.name=resnet18", f"model.pretrained={weights}", "data.channels=3",
                        "output.keep_last=3", "train.epochs=2", *overrides)


def epoch_state(run_dir, epoch):
    return load_checkpoint(run_dir / "checkpoints" / f"epoch-{epoch:04d}.pt")


def test_frozen_backbone_keeps_pretrained_weights_and_statistics(tmp_path, torchvision_file):
    result = train(transfer_config(tmp_path, torchvision_file, "model.freeze=backbone"), progress=False)
    pretrained = torch.load(torchvision_file, weights_only=True)
    final = epoch_state(result.run_dir, 2)["model"]
    for key in ("conv1.weight", "layer1.0.bn1.running_mean", "layer4.1.conv2.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(final[key], pretrained[key]), key
    assert final["fc.weight"].shape == (10, 512)
    assert result.metrics["test"]["accuracy"] > 0.2  # a linear probe on random features still beats chance
    # torchvision weights expect ImageNet normalization, chosen automatically
    assert load_checkpoint(result.run_dir)["meta"]["mean"] == IMAGENET_STATS[0]


def test_unfreezing_fine_tunes_the_backbone_from_that_epoch(tmp_path, torchvision_file):
    config = transfer_config(tmp_path, torchvision_file, "model.freeze=backbone", "model.unfreeze_epoch=2",
                             "optim.backbone_lr=0.01")
    result = train(config, progress=False)
    pretrained = torch.load(torchvision_file, weights_only=True)
    first, second = epoch_state(result.run_dir, 1), epoch_state(result.run_dir, 2)
    assert torch.equal(first["model"]["layer2.0.conv1.weight"], pretrained["layer2.0.conv1.weight"])
    assert not torch.equal(second["model"]["layer2.0.conv1.weight"], pretrained["layer2.0.conv1.weight"])
    rates = {group["name"]: group["lr"] for group in second["optimizer"]["param_groups"]}
    assert rates["backbone"] == pytest.approx(rates["head"] / 10)


def test_last_stage_only(tmp_path, torchvision_file):
    result = train(transfer_config(tmp_path, torchvision_file, "model.freeze=1", "train.epochs=1"), progress=False)
    pretrained = torch.load(torchvision_file, weights_only=True)
    final = epoch_state(result.run_dir, 1)["model"]
    assert torch.equal(final["layer3.1.conv2.weight"], pretrained["layer3.1.conv2.weight"])
    assert not torch.equal(final["layer4.1.conv2.weight"], pretrained["layer4.1.conv2.weight"])


def test_resized_inputs_reach_the_model(tmp_path):
    result = train(quick_config(tmp_path, "data.image_size=16", "train.epochs=1"), progress=False)
    assert load_checkpoint(result.run_dir)["meta"]["image_size"] == [16, 16]
    # MACs scale with the resized area: 4x those of 8x8 inputs
    small = train(quick_config(tmp_path, "train.epochs=1", "output.name=small"), progress=False)
    assert result.metrics["macs"] == pytest.approx(4 * small.metrics["macs"], rel=0.01)


def test_weights_of_another_model_are_refused_by_key(tmp_path, torchvision_file):
    config = quick_config(tmp_path, "model.name=resnet34", f"model.pretrained={torchvision_file}", "data.channels=3")
    with pytest.raises(ReslabError, match="does not fit"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_reslab_checkpoint_fine_tunes_another_run(tmp_path):
    first = train(quick_config(tmp_path, "output.name=first"), progress=False)
    best = first.run_dir / "checkpoints" / "best.pt"
    second = train(quick_config(tmp_path, "output.name=second", f"model.pretrained={best}", "train.epochs=1",
                                "optim.lr=0.01"), progress=False)
    assert second.metrics["test"]["accuracy"] >= first.metrics["test"]["accuracy"] - 0.05


def test_model_options_reach_the_builder_and_wrong_ones_are_refused(tmp_path):
    from reslab import ReslabError

    result = train(quick_config(tmp_path, "model.name=resnet50", "model.stride_in=1x1", "train.epochs=1",
                                "data.channels=3", "data.train_size=256", "data.val_size=64", "data.test_size=64",
                                "output.name=paper-stride"), progress=False)
    assert load_checkpoint(result.run_dir)["meta"]["model_options"] == {"stride_in": "1x1"}
    with pytest.raises(ReslabError, match="model .resnet8. has no option .stride_in."):
        train(quick_config(tmp_path, "model.stride_in=1x1", "output.name=no"), progress=False)
