"""Dataset readers in the real formats, splits, and the device-resident loader; malformed
CIFAR batches and IDX files refused in one line before training."""

import pickle
import tarfile

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T

from reslab import ReslabError
from reslab.config import DataConfig
from reslab.data import DeviceLoader, load_splits
from reslab.data.arrays import ArrayDataset, channel_stats
from reslab.data.cifar import read_cifar
from reslab.data.digits import read_digits
from reslab.data.idx import read_idx
from reslab.data.loader import BatchAugment

from conftest import (
    assert_one_error_line,
    run_cli,
    write_cifar_archive,
    write_cifar_batches,
    write_idx,
    write_mnist,
)


def test_cifar10_archive_is_read_in_order(tmp_path):
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_batch=20, test=30, seed=3)
    train, test, classes, _ = read_cifar(tmp_path, "cifar10", download=False)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (30, 3, 32, 32)
    assert classes[0] == "airplane" and len(classes) == 10
    # The first image of data_batch_1, reshaped row-major to (3, 32, 32) as the format defines.
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as archive:
        first = pickle.load(archive.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")
    assert torch.equal(train.images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert train.labels[:20].tolist() == first[b"labels"]


def test_cifar10_from_the_extracted_folder(tmp_path):
    write_cifar_archive(tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        archive.extractall(tmp_path / "root", filter="data")
    train, test, _, source = read_cifar(tmp_path / "root", "cifar10", download=False)
    assert len(train) == 100 and source.endswith("cifar-10-batches-py")


def test_cifar100_uses_fine_labels(tmp_path):
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", hundred=True)
    train, test, classes, _ = read_cifar(tmp_path, "cifar100", download=False)
    assert len(classes) == 100 and len(train) == 100 and int(train.labels.max()) < 100


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    write_cifar_archive(tmp_path / "ok.tar.gz")
    with tarfile.open(tmp_path / "ok.tar.gz") as src, tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as dst:
        for info in src:
            raw = src.extractfile(info).read()
            if info.name.endswith("batches.meta"):
                raw = pickle.dumps({"label_names": Evil()})
                info.size = len(raw)
            import io
            dst.addfile(info, io.BytesIO(raw))
    with pytest.raises(ReslabError, match="refusing to load builtins.print"):
        read_cifar(tmp_path, "cifar10", download=False)


def test_corrupt_and_incomplete_archives_give_clear_errors(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(ReslabError, match="not a readable CIFAR-10 archive"):
        read_cifar(tmp_path, "cifar10", download=False)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz"):
        pass
    with pytest.raises(ReslabError, match="data_batch_1"):
        read_cifar(tmp_path, "cifar10", download=False)


def test_missing_cifar_says_where_to_put_the_archive(tmp_path):
    with pytest.raises(ReslabError, match="cifar-10-python.tar.gz"):
        read_cifar(tmp_path, "cifar10", download=False)


def test_failed_download_says_where_to_put_the_archive(tmp_path, monkeypatch):
    import torchvision.datasets.utils as utils

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(utils, "download_url", offline)
    with pytest.raises(ReslabError, match="could not download CIFAR-10.*put cifar-10-python.tar.gz in"):
        read_cifar(tmp_path, "cifar10", download=True)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader(tmp_path, compress):
    write_mnist(tmp_path / "mnist", train=50, test=10, compress=compress)
    splits = load_splits(DataConfig(name="mnist", root=str(tmp_path), download=False, val_size=10))
    assert splits.train.images.shape == (40, 1, 28, 28) and len(splits.val) == 10 and len(splits.test) == 10
    assert splits.classes[0].startswith("0")
    raw = read_idx(tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if compress else "")))
    assert raw.shape == (50, 28, 28)


def test_idx_reader_refuses_bad_files(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4, 5, 5)))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ReslabError, match="header promises 100"):
        read_idx(path)
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ReslabError, match="not an IDX file"):
        read_idx(path)


def test_fashion_mnist_class_names(tmp_path):
    write_mnist(tmp_path / "fashion-mnist")
    splits = load_splits(DataConfig(name="fashion-mnist", root=str(tmp_path), download=False))
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"


def test_digits_are_real_and_scaled_to_bytes():
    data, classes = read_digits()
    assert data.images.shape == (1797, 1, 8, 8) and classes == [str(i) for i in range(10)]
    assert data.images.max() == 255 and data.images.min() == 0


def test_splits_are_deterministic_disjoint_and_stratified():
    config = DataConfig(name="digits", val_size=0.1, test_size=0.2, split_seed=0)
    first, again = load_splits(config), load_splits(config)
    assert torch.equal(first.val.images, again.val.images) and torch.equal(first.test.labels, again.test.labels)
    assert len(first.train) + len(first.val) + len(first.test) == 1797
    other = load_splits(DataConfig(name="digits", split_seed=1))
    assert not torch.equal(first.test.images, other.test.images)
    # every class in the validation split, in proportion
    counts = torch.bincount(first.val.labels, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 20
    # no image shared between train and test (digits has duplicates of pixels only by chance; check indices)
    flat = lambda d: {bytes(x.numpy().tobytes()) for x in d.images}  # noqa: E731
    assert len(flat(first.test) & flat(first.train)) < 5


def test_val_split_never_touches_the_test_set(tmp_path):
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_batch=20, test=30)
    splits = load_splits(DataConfig(name="cifar10", root=str(tmp_path), download=False, val_size=20))
    _, official_test, _, _ = read_cifar(tmp_path, "cifar10", download=False)
    assert torch.equal(splits.test.images, official_test.images)
    assert len(splits.train) == 80 and len(splits.val) == 20


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    mean, std = channel_stats(images)
    values = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, values.mean(axis=(0, 2, 3)))
    assert np.allclose(std, values.std(axis=(0, 2, 3)))


def test_a_split_too_large_is_refused():
    with pytest.raises(ReslabError, match="leaves no training images"):
        load_splits(DataConfig(name="digits", val_size=5000))


def _dataset(count=64, size=8):
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(count) % 10)


def test_eval_loader_keeps_order_and_normalizes():
    data = _dataset(10)
    loader = DeviceLoader(data, 4, "cpu", [0.5] * 3, [0.25] * 3, train=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    images = torch.cat([x for x, _ in batches])
    assert torch.allclose(images, (data.images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_train_loader_is_a_reproducible_shuffle_per_epoch():
    data = _dataset(64)
    loader = DeviceLoader(data, 16, "cpu", [0.0] * 3, [1.0] * 3, train=True, seed=7)
    first = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loader])
    loader.set_epoch(1)
    second = torch.cat([y for _, y in loader])
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(data.labels.tolist())


def test_train_loader_drops_only_the_partial_batch():
    loader = DeviceLoader(_dataset(70), 16, "cpu", [0.0] * 3, [1.0] * 3, train=True)
    assert len(loader) == 4 and all(len(y) == 16 for _, y in loader)


def test_two_ranks_see_the_halves_of_one_global_batch():
    data = _dataset(64)
    augment = BatchAugment(crop_padding=2, hflip=True)
    kwargs = dict(train=True, augment=augment, seed=3)
    whole = list(DeviceLoader(data, 32, "cpu", [0.0] * 3, [1.0] * 3, **kwargs))
    halves = [list(DeviceLoader(data, 32, "cpu", [0.0] * 3, [1.0] * 3, rank=r, world_size=2, **kwargs))
              for r in range(2)]
    for b, (images, labels) in enumerate(whole):
        assert torch.equal(images, torch.cat([halves[0][b][0], halves[1][b][0]]))
        assert torch.equal(labels, torch.cat([halves[0][b][1], halves[1][b][1]]))


def test_batch_crop_and_flip_match_torchvision_per_image():
    data = _dataset(32, size=8)
    augment = BatchAugment(crop_padding=2, hflip=True)
    params = augment.draw(32, torch.Generator().manual_seed(0))
    batch = augment.apply_uint8(data.images, params)
    for i in range(32):
        top, left = params["crop"][i].tolist()
        expected = T.functional.crop(T.functional.pad(data.images[i], [2, 2, 2, 2], fill=0), top, left, 8, 8)
        if params["flip"][i]:
            expected = T.functional.horizontal_flip(expected)
        assert torch.equal(batch[i], expected)


def test_crop_offsets_and_flips_are_uniform():
    augment = BatchAugment(crop_padding=4, hflip=True)
    params = augment.draw(90_000, torch.Generator().manual_seed(0))
    counts = torch.bincount(params["crop"][:, 0], minlength=9).float() / 90_000
    assert torch.allclose(counts, torch.full((9,), 1 / 9), atol=0.01)
    assert abs(params["flip"].float().mean().item() - 0.5) < 0.01


def test_rotation_and_scale_keep_the_shape_and_change_pixels():
    data = _dataset(8, size=16)
    augment = BatchAugment(rotation=30, scale=0.2)
    params = augment.draw(8, torch.Generator().manual_seed(0))
    out = augment.apply_float(data.images.float(), params)
    assert out.shape == (8, 3, 16, 16) and not torch.allclose(out, data.images.float())
    identity = augment.apply_float(data.images.float(), {"affine": torch.tensor([[0.0, 1.0]] * 8)})
    assert torch.allclose(identity, data.images.float(), atol=1e-3)


# ---------------------------------------------------------------- malformed CIFAR batches and IDX files


@pytest.mark.parametrize("case, fragment", [
    ({"images": 30, "labels": 29}, "30 images but 29 labels"),
    ({"images": 4, "labels": 4, "data": [[300] * 3072] * 4}, "outside 0..255"),
    ({"images": 4, "labels": 4, "label_values": ["a", "b", "c", "d"]}, "not an array of integers"),
    ({"images": 4, "labels": 4, "data": "pixels"}, "not an array of integers"),
    ({"images": 4, "labels": 4, "names": "airplane"}, "not a list of class names"),
])
def test_a_malformed_cifar_batch_is_one_error_line(tmp_path, case, fragment, capsys):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", **case)
    assert_one_error_line(run_cli(capsys, "train", "--data", "cifar10", "--data-root", tmp_path, "--epochs", "1",
                                  "--out", tmp_path / "runs", "data.download=false"), fragment)


def test_idx_files_with_bad_test_labels_no_images_or_a_corrupt_stream_are_refused_before_training(tmp_path, capsys):
    root = write_mnist(tmp_path / "bad-labels")
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(20, 12))
    assert_one_error_line(run_cli(capsys, "train", "--data", "mnist", "--data-root", root, "--epochs", "1", "--out",
                                  tmp_path / "runs", "data.download=false"), "test labels go up to 12")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    empty = write_mnist(tmp_path / "empty", train=0)
    with pytest.raises(ReslabError, match="hold no images"):
        load_splits(DataConfig(name="mnist", root=str(empty), download=False))
    corrupt = write_mnist(tmp_path / "corrupt", compress=True)
    raw = bytearray((corrupt / "train-images-idx3-ubyte.gz").read_bytes())
    raw[20:40] = bytes(20)  # inside the deflate stream
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(ReslabError, match="cannot read IDX file"):
        load_splits(DataConfig(name="mnist", root=str(corrupt), download=False))
