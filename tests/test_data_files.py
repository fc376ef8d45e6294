"""Datasets of image files (folders, ImageNet, COCO), bad files, the decoders (one EXIF
policy; damaged and oversized PNGs), the file transforms and mixing, and FileLoader. The
datasets are written by the tests as real JPEG/PNG files, cut from the photographs
scikit-image ships (astronaut, coffee, chelsea, rocket)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reslab
from reslab import ReslabError
from reslab.config import AugmentConfig, DataConfig
from reslab.data import build_data, folders
from reslab.data.coco import read_coco
from reslab.data.files import BadImage, FileLoader, ImageList, decode, write_bad_files
from reslab.data.folders import read_folder
from reslab.data.imagenet import read_imagenet
from reslab.data.transforms import BatchMix, ImagePipeline, cutmix_batch, eval_transform, mixup_batch, train_transform

from conftest import png_bytes, write_photos

skimage_data = pytest.importorskip("skimage.data")
# torchvision 0.29 deprecates its image decoders (for TorchCodec) with a warning per call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
PHOTOS = {name: getattr(skimage_data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo(number: int, size=(48, 40)) -> Image.Image:
    """A small crop of one of the sample photographs, different for each ``number``."""
    names = sorted(PHOTOS)
    array = PHOTOS[names[number % len(names)]]
    top, left = (number * 7) % 60, (number * 13) % 80
    return Image.fromarray(array[top : top + 240, left : left + 300]).resize(size)


def write_classes(folder: Path, counts: dict[str, int], start: int = 0, suffix: str = ".jpg") -> list[Path]:
    paths = []
    for c, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / name / f"img{i:03d}{suffix}"
            photo(start + 10 * c + i).save(path)
            paths.append(path)
    return paths


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(PHOTOS["astronaut"]).save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def loader(images: ImageList, batch_size=4, train=True, **options) -> FileLoader:
    pipeline = ImagePipeline(image_size=32, resize_size=36)
    transform = train_transform(pipeline, MEAN) if train else eval_transform(pipeline)
    options.setdefault("workers", 0)
    return FileLoader(images, batch_size, "cpu", MEAN, STD, train=train, transform=transform, image_size=32,
                      **options)


def epoch_batches(file_loader, epoch=0, start=0):
    file_loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in file_loader.iterate(start)]


# ---------------------------------------------------------------- image folders


def test_one_folder_is_split_by_seed_stratified_with_sorted_class_names(tmp_path):
    write_classes(tmp_path, {"zebra": 10, "apple": 10, "moth": 10})
    splits = read_folder(tmp_path, val_size=6, test_size=0.2, split_seed=3)
    assert splits.classes == ["apple", "moth", "zebra"]
    assert splits.sizes() == {"train": 18, "val": 6, "test": 6}
    assert np.bincount(splits.test.targets).tolist() == [2, 2, 2]  # stratified
    assert np.bincount(splits.val.targets).tolist() == [2, 2, 2]
    names = [set(s.paths.tolist()) for s in (splits.train, splits.val, splits.test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    again = read_folder(tmp_path, val_size=6, test_size=0.2, split_seed=3)
    assert again.test.paths.tolist() == splits.test.paths.tolist()
    other = read_folder(tmp_path, val_size=6, test_size=0.2, split_seed=4)
    assert other.test.paths.tolist() != splits.test.paths.tolist()
    path, label = splits.test.path(0), splits.test.targets[0]
    assert Path(path).parent.name == splits.classes[label] and Path(path).is_file()


def test_train_val_test_folders_are_used_as_given(tmp_path):
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        write_classes(tmp_path / split, {"a": count, "b": count})
    splits = read_folder(tmp_path, val_size=0.5)
    assert splits.sizes() == {"train": 8, "val": 4, "test": 6}
    assert all(p.startswith("test/") for p in splits.test.paths.tolist())
    assert splits.layout == "train/val/test folders"


def test_train_and_val_folders_make_val_the_test_split_and_hold_out_validation(tmp_path):
    write_classes(tmp_path / "train", {"a": 6, "b": 6})
    write_classes(tmp_path / "val", {"a": 2, "b": 2})
    splits = read_folder(tmp_path, val_size=4)
    assert splits.sizes() == {"train": 8, "val": 4, "test": 4}
    assert all(p.startswith("val/") for p in splits.test.paths.tolist())
    assert all(p.startswith("train/") for p in splits.val.paths.tolist())


def test_a_class_folder_that_training_lacks_is_refused(tmp_path):
    write_classes(tmp_path / "train", {"a": 3, "b": 3})
    write_classes(tmp_path / "val", {"a": 1, "c": 1})
    with pytest.raises(ReslabError, match="class folder.*c.*training split lacks"):
        read_folder(tmp_path)


def test_hidden_and_non_image_files_are_ignored_and_extensions_any_case(tmp_path):
    write_classes(tmp_path, {"a": 3, "b": 3})
    photo(1).save(tmp_path / "a" / "upper.JPEG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "._img000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "a" / "nested").mkdir()
    photo(2).save(tmp_path / "a" / "nested" / "deep.png")
    splits = read_folder(tmp_path, val_size=0, test_size=2)
    everything = splits.train.paths.tolist() + splits.test.paths.tolist()
    assert len(everything) == 8
    assert "a/upper.JPEG" in everything and "a/nested/deep.png" in everything


def test_an_empty_or_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(ReslabError, match="not a folder of images"):
        read_folder(tmp_path / "nowhere")
    with pytest.raises(ReslabError, match="no class folders"):
        read_folder(tmp_path)


def test_a_link_loop_and_a_pipe_are_reported_not_followed(tmp_path):
    from reslab.data.folders import read_folder

    write_photos(tmp_path / "data", 6, seed=2)
    (tmp_path / "data" / "a" / "loop").symlink_to(tmp_path / "data" / "a")
    (tmp_path / "data" / "b" / "again.png").symlink_to(tmp_path / "data" / "a" / "1.png")
    os.mkfifo(tmp_path / "data" / "b" / "pipe.png")
    splits = read_folder(tmp_path / "data", val_size=2, test_size=2)
    listed = [splits.train.path(i) for i in range(len(splits.train))] + \
             [split.path(i) for split in (splits.val, splits.test) for i in range(len(split))]
    assert len(listed) == len(set(listed)) == 12  # 6 real images per class, each once
    reasons = {Path(bad.path).name: bad.reason for bad in splits.problems}
    assert "loop" in reasons["loop"] and "second link" in reasons["again.png"] and "regular" in reasons["pipe.png"]


def test_an_empty_class_folder_and_a_single_class_are_refused(tmp_path):
    from reslab.data.folders import read_folder

    write_photos(tmp_path / "data", 4, seed=3)
    (tmp_path / "data" / "c").mkdir()
    with pytest.raises(ReslabError, match="class folder 'c' .* holds no images"):
        read_folder(tmp_path / "data", val_size=1, test_size=1)
    write_photos(tmp_path / "one", 4, seed=4)
    import shutil

    shutil.rmtree(tmp_path / "one" / "b")
    with pytest.raises(ReslabError, match="one class folder"):
        read_folder(tmp_path / "one", val_size=1, test_size=1)


# ---------------------------------------------------------------- ImageNet


def write_synsets(folder: Path, wnids: list[str], per_class: int, start: int = 0) -> None:
    write_classes(folder, {wnid: per_class for wnid in wnids}, start=start, suffix=".JPEG")


WNIDS = ["n01440764", "n02012849", "n03126707", "n09999999"]
WORDS = {"n01440764": ("tench", "Tinca tinca"), "n02012849": ("crane",), "n03126707": ("crane",),
         "n09999999": ("coffee mug",)}


def test_imagenet_prepared_layout_names_classes_from_loc_synset_mapping(tmp_path):
    write_synsets(tmp_path / "train", WNIDS, 4)
    write_synsets(tmp_path / "val", WNIDS, 2, start=50)
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {', '.join(WORDS[w])}\n" for w in WNIDS))
    splits = read_imagenet(tmp_path, val_size=4)
    assert splits.classes == ["tench", "crane (n02012849)", "crane (n03126707)", "coffee mug"]
    assert splits.details["wnids"] == WNIDS
    assert splits.sizes() == {"train": 12, "val": 4, "test": 8}
    assert all(p.startswith("val/") for p in splits.test.paths.tolist())


def test_imagenet_without_metadata_keeps_the_wnids(tmp_path):
    write_synsets(tmp_path / "train", WNIDS[:2], 3)
    write_synsets(tmp_path / "val", WNIDS[:2], 1)
    splits = read_imagenet(tmp_path, val_size=0)
    assert splits.classes == WNIDS[:2] and splits.val is None


def test_imagenet_flat_val_folder_is_labelled_by_torchvisions_meta_file(tmp_path):
    write_synsets(tmp_path / "train", WNIDS, 2)
    (tmp_path / "val").mkdir()
    val_wnids = ["n09999999", "n01440764", "n09999999", "n02012849", "n03126707"]
    for i in range(len(val_wnids)):
        photo(30 + i).save(tmp_path / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    torch.save((WORDS, val_wnids), tmp_path / "meta.bin")
    splits = read_imagenet(tmp_path, val_size=0)
    assert [splits.details["wnids"][t] for t in splits.test.targets] == val_wnids
    assert splits.test.paths[0] == "val/ILSVRC2012_val_00000001.JPEG"
    assert splits.classes[0] == "tench" and "flat val" in splits.layout


def test_imagenet_kaggle_layout_with_its_val_solution_csv(tmp_path):
    base = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    write_synsets(base / "train", WNIDS[:2], 2)
    (base / "val").mkdir(parents=True)
    (base / "test").mkdir()  # Kaggle's unlabelled test images: ignored
    for i in range(3):
        photo(40 + i).save(base / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n02012849 1 2 3 4\n"
        "ILSVRC2012_val_00000001,n01440764 5 6 7 8 n01440764 1 1 2 2\n"
        "ILSVRC2012_val_00000003,n01440764 0 0 9 9\n")
    splits = read_imagenet(tmp_path, val_size=0)
    assert splits.test.targets.tolist() == [0, 1, 0] and splits.layout.startswith("Kaggle")


def _tar(path: Path, members: dict[str, bytes], mode="w") -> str:
    with tarfile.open(path, mode) as archive:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _jpeg_bytes(number: int) -> bytes:
    buffer = io.BytesIO()
    photo(number).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_imagenet_official_archives_are_prepared_by_torchvision(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    import torchvision.datasets.imagenet as tv_imagenet

    wnids = WNIDS[:3]
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    synsets = np.zeros((len(wnids),), dtype=[(f, "O") for f in fields])
    for i, wnid in enumerate(wnids):
        synsets[i] = (i + 1, wnid, ", ".join(WORDS[wnid]), "a gloss", 0, np.zeros(0), 0, 2)
    mat = io.BytesIO()
    scipy_io.savemat(mat, {"synsets": synsets})
    truth = [3, 1, 2, 1]  # ILSVRC2012_IDs of the val images, in file order
    md5 = {"devkit": _tar(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", {
        "ILSVRC2012_devkit_t12/data/meta.mat": mat.getvalue(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": "".join(f"{t}\n" for t in truth).encode(),
    }, "w:gz")}
    for wnid in wnids:
        _tar(tmp_path / f"{wnid}.tar", {f"{wnid}_{i}.JPEG": _jpeg_bytes(i) for i in range(2)})
    md5["train"] = _tar(tmp_path / "ILSVRC2012_img_train.tar",
                        {f"{w}.tar": (tmp_path / f"{w}.tar").read_bytes() for w in wnids})
    md5["val"] = _tar(tmp_path / "ILSVRC2012_img_val.tar",
                      {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _jpeg_bytes(20 + i) for i in range(len(truth))})
    for w in wnids:
        (tmp_path / f"{w}.tar").unlink()
    for key, digest in md5.items():  # the real archives' MD5s would refuse these small ones
        monkeypatch.setitem(tv_imagenet.ARCHIVE_META, key, (tv_imagenet.ARCHIVE_META[key][0], digest))
    splits = read_imagenet(tmp_path, val_size=0)
    assert splits.layout == "official archives"
    assert splits.classes == ["tench", "crane (n02012849)", "crane (n03126707)"]
    assert splits.sizes()["train"] == 6
    assert sorted(splits.test.targets.tolist()) == sorted(t - 1 for t in truth)
    first = splits.test.paths.tolist().index("val/n03126707/ILSVRC2012_val_00000001.JPEG")
    assert splits.test.targets[first] == 2  # image 1 is ILSVRC2012_ID 3: torchvision sorted it there


# ---------------------------------------------------------------- COCO


def write_coco(root: Path, year=2017, categories=((1, "person"), (3, "car"), (18, "dog")), train=None, val=None):
    """A COCO folder: images and instances JSONs; ``train`` / ``val`` map file names to the
    category ids of their annotations (an empty list: an image without annotations)."""
    train = train or {"a.jpg": [18, 1, 1], "b.jpg": [3], "c.jpg": [], "d.jpg": [1, 3, 18], "e.jpg": [3, 3]}
    val = val or {"v1.jpg": [1], "v2.jpg": [3, 18], "v3.jpg": []}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    files = {}
    for split, images in (("train", train), ("val", val)):
        folder = root / f"{split}{year}"
        folder.mkdir(exist_ok=True)
        entries, annotations = [], []
        for number, (name, cats) in enumerate(images.items()):
            image_id = 100 * number + 7
            photo(number + (50 if split == "val" else 0)).save(folder / name)
            entries.append({"id": image_id, "file_name": name, "width": 48, "height": 40})
            annotations.extend({"id": len(annotations) + 1, "image_id": image_id, "category_id": c,
                                "iscrowd": 0, "bbox": [0, 0, 5, 5], "area": 25} for c in cats)
        data = {"images": entries, "annotations": annotations,
                "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in categories]}
        path = root / "annotations" / f"instances_{split}{year}.json"
        path.write_text(json.dumps(data))
        files[split] = path
    return files


def test_coco_targets_are_multi_hot_over_categories_sorted_by_id(tmp_path):
    write_coco(tmp_path, categories=((18, "dog"), (1, "person"), (3, "car")))
    splits = read_coco(tmp_path, 2017, val_size=0)
    assert splits.classes == ["person", "car", "dog"] and splits.task == "multi-label"
    paths = splits.train.paths.tolist()
    assert paths == ["train2017/a.jpg", "train2017/b.jpg", "train2017/d.jpg", "train2017/e.jpg"]  # c.jpg dropped
    assert splits.train.targets.tolist() == [[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert splits.test.targets.tolist() == [[1, 0, 0], [0, 1, 1]]
    assert splits.details["unannotated_dropped"] == {"train": 1, "val": 1}
    assert splits.train.target(0).dtype == torch.float32


def test_coco_keeps_unannotated_images_as_all_zero_rows_when_asked(tmp_path):
    write_coco(tmp_path, year=2014)
    splits = read_coco(tmp_path, 2014, keep_unannotated=True, val_size=0)
    assert len(splits.train) == 5 and splits.train.targets[2].tolist() == [0, 0, 0]


def test_coco_json_without_categories_is_refused(tmp_path):
    files = write_coco(tmp_path)
    data = json.loads(files["train"].read_text())
    del data["categories"]
    files["train"].write_text(json.dumps(data))
    with pytest.raises(ReslabError, match="no 'categories' list"):
        read_coco(tmp_path)


def test_coco_json_that_is_not_json_is_refused(tmp_path):
    files = write_coco(tmp_path)
    files["val"].write_text("{ this is not json")
    with pytest.raises(ReslabError, match="not a readable JSON"):
        read_coco(tmp_path)


def test_coco_annotations_with_missing_keys_or_unknown_ids_are_skipped_and_reported(tmp_path):
    files = write_coco(tmp_path)
    data = json.loads(files["train"].read_text())
    data["annotations"] += [
        {"id": 900, "image_id": 123456, "category_id": 1},  # no such image
        {"id": 901, "image_id": 7, "category_id": 99},  # no such category
        {"id": 902, "image_id": 7},  # no category_id
        {"image_id": 207, "category_id": 1},  # no id: kept (pycocotools needs one; it gets one)
    ]
    data["images"].append({"id": 999})  # no file_name
    files["train"].write_text(json.dumps(data))
    splits = read_coco(tmp_path, val_size=0)
    reasons = [bad.reason for bad in splits.problems]
    assert len(reasons) == 4 and all(bad.path == str(files["train"]) for bad in splits.problems)
    assert any("unknown image id 123456" in r for r in reasons)
    assert any("unknown category id 99" in r for r in reasons)
    assert any("no 'category_id'" in r for r in reasons) and any("no 'file_name'" in r for r in reasons)
    assert splits.train.targets[2].tolist() == [1, 0, 0]  # c.jpg (id 207) got its annotation
    with pytest.raises(ReslabError, match=r"instances_train2017.json: images\[5\]: no 'file_name'.*4 problem"):
        build_data(DataConfig(name="coco", root=str(tmp_path), strict=True, workers=0, val_size=0))


# ---------------------------------------------------------------- decoding and bad files


@pytest.mark.parametrize("decoder", ["torchcodec", "torchvision", "pil"])
def test_a_real_photograph_decodes_alike_with_either_decoder(tmp_path, decoder):
    path = tmp_path / "astronaut.jpg"
    Image.fromarray(PHOTOS["astronaut"]).save(path, quality=95)
    array = decode(str(path), decoder).permute(1, 2, 0).numpy()
    assert array.shape == (512, 512, 3) and array.dtype == np.uint8
    assert np.abs(array.astype(int) - PHOTOS["astronaut"].astype(int)).mean() < 3  # JPEG's loss only


@pytest.mark.parametrize("decoder", ["torchcodec", "torchvision", "pil"])
@pytest.mark.parametrize("mode,suffix", [("L", ".jpg"), ("CMYK", ".jpg"), ("RGBA", ".png"), ("P", ".png"),
                                         ("L", ".png"), ("RGB", ".bmp")])
def test_other_colour_modes_come_out_rgb(tmp_path, decoder, mode, suffix):
    path = tmp_path / f"image{suffix}"
    photo(3, size=(40, 30)).convert(mode).save(path)
    tensor = decode(str(path), decoder)
    assert tensor.shape == (3, 30, 40) and tensor.dtype == torch.uint8
    if mode == "L":
        assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])


@pytest.mark.parametrize("decoder", ["torchcodec", "torchvision", "pil"])
def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path, decoder):
    ramp = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    tensor = decode(str(tmp_path / "deep.png"), decoder)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 30, 40)
    assert torch.equal(tensor[0], torch.from_numpy((ramp >> 8).astype(np.uint8)))


@pytest.mark.parametrize("decoder", ["torchcodec", "torchvision", "pil"])
def test_broken_files_raise_bad_image(tmp_path, decoder):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is a text file with an image extension\n")
    for path, reason in ((tmp_path / "empty.jpg", "cannot identify"),
                         (truncated_jpeg(tmp_path / "cut.jpg"), "truncated"),
                         (tmp_path / "text.png", "cannot identify"),
                         (tmp_path / "missing.jpg", "No such file")):
        with pytest.raises(BadImage, match=reason):
            decode(str(path), decoder)


def bad_folder(root: Path) -> list[Path]:
    """A class-folder dataset of 12 good images and three bad files (empty, truncated,
    text); returns the bad paths."""
    write_classes(root, {"a": 6, "b": 6})
    bad = [root / "a" / "empty.jpg", truncated_jpeg(root / "b" / "cut.jpg"), root / "b" / "text.png"]
    bad[0].write_bytes(b"")
    bad[2].write_text("not a PNG")
    return bad


def test_training_survives_bad_files_substituting_and_recording_them(tmp_path):
    bad = bad_folder(tmp_path)
    images = read_folder(tmp_path, val_size=0, test_size=1, split_seed=0).train  # 14 of the 15 files
    train = loader(images, batch_size=4)
    batches = epoch_batches(train)
    assert len(batches) == 3 and all(x.shape == (4, 3, 32, 32) and torch.isfinite(x).all() for x, _ in batches)
    recorded = set(train.bad_files)
    assert recorded <= {str(p) for p in bad} and len(recorded) >= 1
    for epoch in range(1, 6):  # every image is met within a few shuffled epochs
        epoch_batches(train, epoch)
    listed = {images.path(i) for i in range(len(images))}
    assert set(train.bad_files) == {str(p) for p in bad} & listed
    assert "truncated" in train.bad_files.get(str(bad[1]), "truncated")


def test_evaluation_drops_bad_files_and_counts_each_good_image_once(tmp_path):
    bad = bad_folder(tmp_path)
    _, images = folders.scan_classes(tmp_path, "", None, [])
    evaluation = loader(images, batch_size=4, train=False)
    seen = sum(len(y) for _, y in evaluation)
    assert seen == 12 and set(evaluation.bad_files) == {str(p) for p in bad}


def test_bad_files_go_to_bad_files_txt_through_the_bundle(tmp_path):
    bad = bad_folder(tmp_path / "data")
    bundle = build_data(DataConfig(name="folder", root=str(tmp_path / "data"), workers=0, val_size=0,
                                    test_size=0.5, image_size=32), batch_size=2, eval_batch_size=4)
    for _ in bundle.test:
        pass
    for _ in bundle.train:
        pass
    write_bad_files(tmp_path / "bad_files.txt", bundle.bad_files())
    lines = (tmp_path / "bad_files.txt").read_text().splitlines()
    assert lines and {line.split("\t")[0] for line in lines} <= {str(p) for p in bad}
    assert all(len(line.split("\t")) == 2 for line in lines)


def test_strict_mode_refuses_the_dataset_up_front_naming_a_bad_file(tmp_path):
    bad = bad_folder(tmp_path)
    with pytest.raises(ReslabError) as error:
        build_data(DataConfig(name="folder", root=str(tmp_path), strict=True, workers=0, image_size=32))
    message = str(error.value)
    assert any(str(p) in message for p in bad) and "3 bad image file(s)" in message


def make_unreadable(folder: Path, monkeypatch) -> None:
    folder.chmod(0)
    if os.geteuid() == 0:  # root lists any folder: make this one fail as it would for a user
        real = folders.list_dir

        def list_dir(path):
            if Path(path) == folder:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(folders, "list_dir", list_dir)


def test_an_unreadable_directory_is_skipped_and_reported_or_refused_when_strict(tmp_path, monkeypatch):
    write_classes(tmp_path, {"a": 4, "b": 4})
    locked = tmp_path / "b" / "locked"
    locked.mkdir()
    photo(9).save(locked / "hidden.jpg")
    make_unreadable(locked, monkeypatch)
    try:
        splits = read_folder(tmp_path, val_size=0, test_size=2)
        reported = [(b.path, b.reason) for b in splits.problems]
        assert reported == [(str(locked), "unreadable directory: Permission denied")]
        assert len(splits.train) + len(splits.test) == 8
        with pytest.raises(ReslabError, match="locked: unreadable directory"):
            build_data(DataConfig(name="folder", root=str(tmp_path), strict=True, workers=0, test_size=2))
    finally:
        locked.chmod(0o755)


def test_a_run_of_bad_files_longer_than_any_substitute_search_stops_with_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(20):
        (tmp_path / "a" / f"{i:02d}.jpg").write_bytes(b"")
    images = folders.scan_classes(tmp_path, "", None, [])[1]
    with pytest.raises(ReslabError, match="in a row failed to decode"):
        epoch_batches(loader(images, batch_size=4))


# ---------------------------------------------------------------- the decoders: one EXIF policy, damaged and huge PNGs


def png(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


def jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ramp_photo():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 30)[None, :, None] + np.linspace(0, 50, 20)[:, None, None]
    return np.clip(ramp + rng.normal(0, 10, (20, 30, 3)), 0, 255).astype(np.uint8)


@pytest.mark.numerics  # outputs compared across decoders' kernels: run with both ISAs
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")  # asked for
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_decoder_applies_the_exif_orientation_as_pillow_shows_the_photo(ramp_photo, orientation, tmp_path):
    from PIL import Image, ImageOps

    from reslab.data.decode import decode

    data = png(ramp_photo, orientation)
    with Image.open(io.BytesIO(data)) as image:
        shown = torch.from_numpy(np.array(ImageOps.exif_transpose(image).convert("RGB"))).permute(2, 0, 1)
    if orientation in (5, 6, 7, 8):
        assert shown.shape[1:] == (30, 20)  # rotated a quarter turn
    (tmp_path / "photo.png").write_bytes(data)
    for decoder in ("pil", "torchcodec", "torchvision", "auto"):
        for source in (data, str(tmp_path / "photo.png")):
            assert torch.equal(decode(source, decoder), shown), (decoder, type(source))


@pytest.mark.numerics  # outputs compared across decoders' kernels: run with both ISAs
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")  # asked for
def test_jpeg_decoders_agree_to_a_rounding_step(ramp_photo):
    from reslab.data.decode import decode

    data = jpeg(ramp_photo, orientation=6)
    reference = decode(data, "pil").int()
    for decoder in ("torchcodec", "torchvision", "auto"):
        decoded = decode(data, decoder).int()
        assert decoded.shape == reference.shape == (3, 30, 20)
        assert (decoded - reference).abs().max().item() <= 2, decoder


@pytest.mark.numerics  # outputs compared across decoders' kernels: run with both ISAs
def test_auto_prefers_torchcodec_and_torchvision_never_decodes_pngs_under_auto(monkeypatch):
    import importlib.util

    from reslab.data import decode as decoding

    assert decoding.resolve_decoder("auto") == "torchcodec"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchcodec" else real(name, *a))
    decoding._resolved.cache_clear()  # decode() looks TorchCodec up once per process
    assert decoding.resolve_decoder("auto") == "torchvision-jpeg"
    with pytest.raises(ReslabError, match=r"pip install -e '\.\[torchcodec\]'"):
        decoding.resolve_decoder("torchcodec")
    assert decoding.resolve_decoder("torchcodec", strict=False) == "torchvision-jpeg"
    calls = []
    monkeypatch.setattr(decoding, "_decode_torchvision", lambda *a: calls.append(a) or torch.zeros(3, 1, 1))
    decoding.decode(png(np.zeros((4, 4, 3), np.uint8)), "auto")
    assert calls == []  # a PNG went to Pillow
    decoding.decode(jpeg(np.zeros((4, 4, 3), np.uint8)), "auto")
    assert len(calls) == 1
    decoding._resolved.cache_clear()


def test_a_png_shorter_than_its_header_is_a_bad_file_not_a_crash(tmp_path):
    import zlib

    from reslab.data.decode import BadImage, decode

    broken = png_bytes(40, 40, zlib.compress(b"\x00" * 100))  # 40 rows of 121 bytes promised
    (tmp_path / "broken.png").write_bytes(broken)
    code = ("import sys\nfrom reslab.data.decode import decode, BadImage\n"
            "try:\n    decode(sys.argv[1])\nexcept BadImage as e:\n    print('bad:', e)\n")
    process = subprocess.run([sys.executable, "-c", code, str(tmp_path / "broken.png")], capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0 and process.stdout.startswith("bad:"), (process.returncode, process.stderr)
    with pytest.raises(BadImage):
        decode(broken)


@pytest.mark.numerics  # outputs compared across decoders' kernels: run with both ISAs
def test_torchcodec_reports_a_png_shorter_than_its_header_as_damaged():
    import zlib

    from reslab.data.decode import BadImage, decode

    with pytest.raises(BadImage, match="damaged image data"):
        decode(png_bytes(40, 40, zlib.compress(b"\x00" * 100)), "torchcodec")


def test_an_image_declaring_a_huge_canvas_is_refused_before_it_is_decoded(tmp_path):
    import zlib

    from reslab.data.decode import BadImage, decode

    bomb = png_bytes(16000, 16000, zlib.compress(b"\x00" * 1000))  # 256 million pixels declared
    (tmp_path / "big.png").write_bytes(png_bytes(8000, 8000, zlib.compress(b"\x00" * 1000)))  # under Pillow's limit
    with pytest.raises(BadImage, match="8000x8000 pixels is larger than the 50,000,000"):
        decode(str(tmp_path / "big.png"))
    (tmp_path / "bomb.png").write_bytes(bomb)
    for decoder in ("pil", "torchvision", "torchcodec", "auto"):
        with pytest.raises(BadImage, match="larger than the 50,000,000 pixels accepted"):
            decode(str(tmp_path / "bomb.png"), decoder)


# ---------------------------------------------------------------- FileLoader


@pytest.fixture
def image_list(tmp_path) -> ImageList:
    write_classes(tmp_path, {"a": 7, "b": 7, "c": 6})
    return folders.scan_classes(tmp_path, "", None, [])[1]


def test_file_loader_is_deterministic_per_seed_and_epoch_whatever_the_worker_count(image_list):
    first = epoch_batches(loader(image_list, seed=5), epoch=2)
    again = epoch_batches(loader(image_list, seed=5, workers=2), epoch=2)
    assert len(first) == 5  # 20 images, batch 4, the last partial batch dropped (none here)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    other_epoch = epoch_batches(loader(image_list, seed=5), epoch=3)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other_epoch))


def test_file_loader_does_not_change_the_training_processs_random_stream(image_list):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch_batches(loader(image_list))
    assert torch.equal(torch.rand(3), expected)


def test_two_ranks_together_see_exactly_the_global_batch(image_list):
    whole = epoch_batches(loader(image_list, batch_size=6, seed=1), epoch=4)
    ranks = [epoch_batches(loader(image_list, batch_size=6, seed=1, rank=r, world_size=2), epoch=4) for r in (0, 1)]
    assert len(whole) == 3 and all(len(r) == 3 for r in ranks)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *ranks):
        assert x0.shape[0] == 3 and x1.shape[0] == 3
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_resume_in_mid_epoch_gives_the_remaining_batches_without_reading_the_skipped_images(image_list,
                                                                                            monkeypatch):
    import reslab.data.files as files

    full = epoch_batches(loader(image_list, seed=2), epoch=1)
    decoded = []
    real_decode = files.decode
    monkeypatch.setattr(files, "decode", lambda path, decoder: decoded.append(path) or real_decode(path, decoder))
    rest = epoch_batches(loader(image_list, seed=2), epoch=1, start=3)
    assert len(rest) == 2 and len(decoded) == 8  # two batches of 4: only their images were read
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], rest))


def test_evaluation_keeps_order_every_image_and_normalizes_on_the_device(image_list):
    evaluation = loader(image_list, batch_size=8, train=False)
    batches = epoch_batches(evaluation)
    assert len(evaluation) == 3 and [len(y) for _, y in batches] == [8, 8, 4]
    assert torch.cat([y for _, y in batches]).tolist() == image_list.targets.tolist()
    pipeline = ImagePipeline(image_size=32, resize_size=36)
    expected = eval_transform(pipeline)(decode(image_list.path(9), "torchvision")).float()
    mean, std = torch.tensor(MEAN).view(3, 1, 1) * 255, torch.tensor(STD).view(3, 1, 1) * 255
    assert torch.allclose(batches[1][0][1], (expected - mean) / std, atol=1e-5)


def test_training_batches_drop_the_last_partial_batch(image_list):
    assert len(loader(image_list, batch_size=6)) == 3 and len(loader(image_list, batch_size=6, train=False)) == 4


def test_eval_pipeline_resizes_then_centre_crops_or_squashes():
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    assert eval_transform(ImagePipeline(image_size=224))(image).shape == (3, 224, 224)
    assert ImagePipeline(image_size=224).eval_resize == 256
    squash = eval_transform(ImagePipeline(image_size=64, center_crop=False))
    assert squash(image).shape == (3, 64, 64)
    every = ImagePipeline(image_size=32, color_jitter=0.4, auto_augment="trivial", random_erasing=1.0)
    out = train_transform(every, MEAN)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.numerics  # outputs compared across decoders' kernels: run with both ISAs
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_resize_filter_is_the_configured_one_in_evaluation_and_prediction(interpolation, ramp_photo):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional

    from reslab.data.sources import preprocessing
    from reslab.data.transforms import ImagePipeline, eval_transform
    from reslab.inference.predict import prepare

    image = torch.from_numpy(ramp_photo).permute(2, 0, 1).contiguous()
    pipeline = ImagePipeline(image_size=16, center_crop=True, interpolation=interpolation)
    out = eval_transform(pipeline)(image).as_subclass(torch.Tensor)
    expected = functional.center_crop(functional.resize(image, 18, InterpolationMode(interpolation), antialias=True),
                                      16)
    assert torch.equal(out, expected)
    spec = preprocessing(16, 18, True, [0.5] * 3, [0.5] * 3, 3, interpolation, "pil")
    assert torch.equal(prepare(image, {"image_size": [16, 16], "preprocess": spec}), expected)
    other = "bicubic" if interpolation == "bilinear" else "bilinear"
    assert not torch.equal(eval_transform(ImagePipeline(image_size=16, interpolation=other))(image), out)


# ---------------------------------------------------------------- mixing


def multi_hot(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_multilabel_mixup_is_the_convex_combination_and_sums_accordingly():
    images = torch.rand(4, 3, 8, 8)
    targets = multi_hot([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]])
    mixed_images, mixed = mixup_batch(images.clone(), targets, 0.7)
    previous = targets.roll(1, 0)
    assert torch.allclose(mixed, 0.7 * targets + 0.3 * previous)
    assert torch.allclose(mixed.sum(1), 0.7 * targets.sum(1) + 0.3 * previous.sum(1))
    assert torch.allclose(mixed_images, 0.7 * images + 0.3 * images.roll(1, 0))
    assert mixed[2, 1] == 1 and mixed[2, 0] == pytest.approx(0.7)  # a label both images have stays 1


def test_multilabel_cutmix_weights_targets_by_the_pasted_area():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 10, 20).clone()  # image i is all i
    targets = multi_hot([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    mixed_images, mixed = cutmix_batch(images, targets, 0.64, (3, 18))  # box half-size 0.3: 3 rows, 6 columns
    kept = (mixed_images == images).float().mean(dim=(1, 2, 3))  # fraction of each image left
    assert kept.tolist() == pytest.approx([1 - (6 * 8) / 200] * 4)  # rows 0-5 (clipped), columns 12-20 (clipped)
    previous = targets.roll(1, 0)
    for i in range(4):
        assert torch.allclose(mixed[i], kept[i] * targets[i] + (1 - kept[i]) * previous[i])
        assert mixed[i].sum() == pytest.approx(float(kept[i] * targets[i].sum() + (1 - kept[i]) * previous[i].sum()))


@pytest.mark.parametrize("which", ["mixup", "cutmix"])
def test_multilabel_mixing_makes_torchvisions_draws(which):
    from torchvision.transforms import v2

    images, targets = torch.rand(6, 3, 16, 16), (torch.rand(6, 5) < 0.4).float()
    mix = BatchMix(5, multi_label=True, **{which: 1.0})
    ours = mix(images.clone(), targets, seed=11)
    reference = (v2.CutMix if which == "cutmix" else v2.MixUp)(alpha=1.0)
    torch.default_generator.manual_seed(11)
    theirs = reference(images.clone(), targets)  # torchvision mixes 2-D label rows the same way
    assert torch.allclose(ours[0], theirs[0]) and torch.allclose(ours[1], theirs[1])
    assert torch.equal(mix(images.clone(), targets, seed=11)[1], ours[1])  # the same seed, the same mix


def test_single_label_mixing_goes_through_torchvision_and_gives_probability_rows():
    mix = BatchMix(4, multi_label=False, mixup=0.4, cutmix=1.0)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    state = torch.default_generator.get_state()
    _, targets = mix(images, labels, seed=3)
    assert torch.equal(torch.default_generator.get_state(), state)  # the training stream is untouched
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))


# ---------------------------------------------------------------- build_data and a training step


def test_build_data_for_an_in_memory_dataset_gives_device_loaders():
    bundle = build_data(DataConfig(name="digits"), batch_size=64, eval_batch_size=128)
    assert bundle.task == "single-label" and bundle.in_channels == 1 and bundle.image_size == [8, 8]
    assert len(bundle.classes) == 10 and bundle.description["loader"] == "device"
    images, labels = next(bundle.train.iterate(0))
    assert images.shape == (64, 1, 8, 8) and labels.dtype == torch.long


def test_build_data_refuses_bad_values_naming_the_key():
    with pytest.raises(ReslabError, match="'augment.auto_augment' must be one of"):
        build_data(DataConfig(name="folder"), AugmentConfig(auto_augment="random"))
    with pytest.raises(ReslabError, match="'data.decoder'"):
        build_data(DataConfig(name="folder", decoder="opencv"))


def test_a_multilabel_training_step_on_coco_files(tmp_path):
    write_coco(tmp_path)
    bundle = build_data(DataConfig(name="coco", root=str(tmp_path), image_size=32, workers=0, val_size=0),
                        AugmentConfig(mixup=0.5), batch_size=2, eval_batch_size=4, seed=0)
    assert bundle.task == "multi-label" and bundle.classes == ["person", "car", "dog"]
    assert bundle.image_size == [32, 32] and bundle.description["test_split"] == "val2017"
    model = reslab.create_model("resnet8", num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = torch.nn.BCEWithLogitsLoss()
    before = [p.detach().clone() for p in model.parameters()]
    bundle.train.set_epoch(0)
    model.train()
    for images, targets in bundle.train.iterate(0):
        assert images.shape == (2, 3, 32, 32) and targets.shape == (2, 3) and targets.dtype == torch.float32
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    from reslab.evaluate.multilabel import multilabel_metrics

    model.eval()
    with torch.no_grad():
        logits, targets = zip(*[(model(x), y) for x, y in bundle.test])
    metrics = multilabel_metrics(torch.cat(logits), torch.cat(targets), bundle.classes)
    assert metrics["samples"] == 2 and 0 <= metrics["map"] <= 1
