"""Seeded fuzzing of the files users hand to reslab: hub folders (``reslab predict DIR``,
``reslab evaluate DIR``, ``model.pretrained=DIR``), Keras files (legacy whole-model ``.h5``
and ``.keras`` archives) and PNG/JPEG images under every decoder. Each mutated input must
give a result or one ``reslab: error:`` line with exit 2 (a ``ReslabError``), or, in a set of
images, a skipped and listed file: never a traceback, a hang or a dead process.

The cases are drawn from ``SEED``; a failure names its case, and ``random.Random(SEED + case)``
gives that case back. About 400 cases, under a minute on two cores."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from reslab.cli import main
from reslab.errors import ReslabError
from reslab.models import create_model
from reslab.models.weights import load_keras_weights
from reslab.train.setup import load_pretrained

from conftest import (
    png_chunks,
    png_from_chunks,
    tiny_resnet_v2,
    write_hub_folder,
    write_keras_archive,
    write_keras_h5,
)

SEED = 26
HUB_CASES = 150
KERAS_CASES = 90
IMAGE_CASES = 160

# Values a careless or hostile config.json puts where a number, a word or a list belongs.
ODD_VALUES = [None, True, False, 0, -1, 1, 3, 2**31, 10**12, -0.5, 1e-30, 1e-9, 1e308, math.nan, math.inf, -math.inf,
              "", "x", "bicubic", "nearest", "wrn9994_64", "resnet8", [], [0], [4096, 4096], [3, 4096, 4096], [1e-30],
              ["a", "b"], {}, {"a": 1}, {"resize_size": -5}]


def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _one_error_line(code: int, err: str) -> str | None:
    """Why a refusal breaks the contract, or None."""
    if code != 2:
        return f"exit {code}"
    lines = err.strip("\n").split("\n")
    if not lines[-1].startswith("reslab: error: ") or "\n" in err.rstrip("\n").split("reslab: error: ")[-1]:
        return f"not one error line: {err[-300:]!r}"
    return None


# ---------------------------------------------------------------- hub folders


def _json_paths(node, path=()):
    """Every (path) into a JSON document, containers included."""
    yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _json_paths(value, (*path, key))


def _mutate_config(config: dict, rng: random.Random) -> str:
    """config.json's text after one to three random changes."""
    for _ in range(rng.randint(1, 3)):
        paths = [path for path in list(_json_paths(config))[1:] if "label_names" not in path[:-1]]
        settings = [path for path in paths if path[0] in ("pretrained_cfg", "reslab", "model_args")]
        path = rng.choice(settings if settings and rng.random() < 0.7 else paths)
        *parents, key = path
        node = config
        for parent in parents:
            node = node[parent]
        action = rng.random()
        if action < 0.6:
            node[key] = rng.choice(ODD_VALUES)
        elif action < 0.75 and isinstance(node, dict):
            del node[key]
        elif action < 0.9 and isinstance(node[key], (int, float)) and not isinstance(node[key], bool):
            node[key] = node[key] * rng.choice([0, -1, 1e-9, 1e9, 0.5, 2])
        elif isinstance(node, dict):
            node[key + rng.choice(["_", "s", "x"])] = node.pop(key)  # a misspelt key
    text = json.dumps(config)  # NaN and Infinity as Python's json writes (and reads) them
    if rng.random() < 0.1:
        cut = rng.randrange(len(text))
        text = text[:cut] + rng.choice(["", "}", "\x00", "\u00ff"])
    return text


def _mutate_weights(path: Path, rng: random.Random) -> None:
    from safetensors.torch import load_file, save_file

    action = rng.random()
    if action < 0.4:
        state = load_file(str(path))
        key = rng.choice(sorted(state))
        if state[key].is_floating_point() and rng.random() < 0.7:
            state[key].view(-1)[rng.randrange(state[key].numel())] = rng.choice([math.nan, math.inf, 1e38, -1e38])
        elif rng.random() < 0.5:
            del state[key]
        else:
            state[key] = torch.zeros(rng.randint(1, 5), rng.randint(1, 5))
        save_file(state, str(path))
    else:
        data = bytearray(path.read_bytes())
        if action < 0.7:
            for _ in range(rng.randint(1, 8)):
                # the 8-byte header length and the JSON header are where damage shows most
                index = rng.randrange(min(len(data), 2000)) if rng.random() < 0.6 else rng.randrange(len(data))
                data[index] = rng.randrange(256)
        else:
            del data[rng.randrange(len(data)):]
        path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def hub_bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-hub")
    own = write_hub_folder(folder / "own")
    timm = write_hub_folder(folder / "timm", "resnet18", channels=3, image_size=32, num_classes=4, dataset=None)
    config = json.loads((timm / "config.json").read_text())
    del config["reslab"]
    (timm / "config.json").write_text(json.dumps(config))
    image = folder / "image.png"
    Image.new("RGB", (20, 12), (40, 160, 90)).save(image)
    return own, timm, image


def test_mutated_hub_folders_give_a_result_or_one_error_line(hub_bases, tmp_path):
    own, timm, image = hub_bases
    failures, refused = [], 0
    for case in range(HUB_CASES):
        rng = random.Random(SEED + case)
        base = timm if case % 5 == 4 else own
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        (folder / "config.json").write_text(_mutate_config(json.loads((base / "config.json").read_text()), rng))
        weights = folder / "model.safetensors"
        if rng.random() < 0.25:
            shutil.copy(base / "model.safetensors", weights)
            _mutate_weights(weights, rng)
        else:
            weights.symlink_to(base / "model.safetensors")
        command = "evaluate" if base is own and case % 10 == 0 else "pretrained" if case % 3 == 0 else "predict"
        try:
            if command == "pretrained":
                model = create_model("resnet8", num_classes=10, in_channels=1)
                try:
                    load_pretrained(model, str(folder))
                    assert all(torch.isfinite(v).all() for v in model.state_dict().values()
                               if v.is_floating_point()), "loaded weights that are not finite"
                except ReslabError as exc:
                    refused += 1
                    assert "\n" not in str(exc), str(exc)
            else:
                argv = ["predict", folder, image, "--format", "json"] if command == "predict" else ["evaluate", folder]
                code, out, err = _cli(*argv, "--device", "cpu")
                if code == 0 and command == "predict":
                    for result in json.loads(out)["results"]:
                        assert all(0 <= p["probability"] <= 1 for p in result["predictions"]), out
                elif code != 0:
                    refused += 1
                    problem = _one_error_line(code, err)
                    assert problem is None, problem
        except Exception as exc:
            failures.append(f"case {case} ({command}): {type(exc).__name__}: {str(exc)[:200]}")
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert refused > HUB_CASES // 3  # the mutations do reach the checks


# ---------------------------------------------------------------- Keras files


def _mutate_h5(path: Path, rng: random.Random, root_name: str | None) -> None:
    with h5py.File(path, "r+") as file:
        root = file[root_name] if root_name else file
        datasets = []
        root.visititems(lambda name, node: datasets.append(name) if isinstance(node, h5py.Dataset) else None)
        name = rng.choice(datasets)
        action = rng.random()
        if action < 0.35 and root[name].size:
            values = root[name][()]
            values.reshape(-1)[rng.randrange(values.size)] = rng.choice([math.nan, math.inf, -1.0, 1e30, -1e30])
            root[name][...] = values
        elif action < 0.5:
            del root[name]
        elif action < 0.7:
            del root[name]
            shape = rng.choice([(), (3,), (4, 4), (1, 1, 1, 1, 1), (2**16, 2**16), (7, 7, 3)])
            dtype = rng.choice([np.float32, np.int64, np.float16, "S4"])
            if math.prod(shape) > 2**20:
                root.create_dataset(name, shape=shape, dtype=np.float32, chunks=True)  # declared, never written
            else:
                root.create_dataset(name, data=np.ones(shape).astype(dtype))
        elif action < 0.8:
            del root[name]
            root[name] = h5py.ExternalLink(rng.choice(["/etc/hostname", str(path)]), "/" + name)
        elif action < 0.9:
            del root[name]
            root[name] = h5py.SoftLink("/" + (f"{root_name}/" if root_name else "") + rng.choice(datasets))
        else:
            holder = rng.choice([root] + [root[g] for g in root if isinstance(root[g], h5py.Group)])
            for key in list(holder.attrs):
                holder.attrs[key] = rng.choice([np.array([b"nonsense", b"conv1_conv"]), np.array([1, 2]),
                                                np.array([b"conv1_conv/kernel:0"] * 3)])


def _mutate_bytes(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if rng.random() < 0.6:
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    else:
        del data[rng.randrange(len(data)):]
    path.write_bytes(bytes(data))


def _mutate_archive(source: Path, target: Path, rng: random.Random, scratch: Path) -> None:
    import zipfile

    with zipfile.ZipFile(source) as archive:
        config = json.loads(archive.read("config.json"))
        (scratch / "weights.h5").write_bytes(archive.read("model.weights.h5"))
    if rng.random() < 0.5:
        layers = config["config"]["layers"]
        layer = rng.choice(layers)
        field = rng.choice(["class_name", "config", "name", "use_bias"])
        if field in ("class_name", "config"):
            layer[field] = rng.choice(ODD_VALUES[:20] + ["Dense", "Conv2D", "Functional", "BatchNormalization"])
        elif isinstance(layer.get("config"), dict):
            layer["config"][field] = rng.choice(ODD_VALUES)
        if rng.random() < 0.3:
            rng.shuffle(layers)
    else:
        _mutate_h5(scratch / "weights.h5", rng, None)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.write(scratch / "weights.h5", "model.weights.h5")


@pytest.fixture(scope="module")
def keras_bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-keras")
    model = tiny_resnet_v2()
    return write_keras_h5(folder / "tiny.h5", model), write_keras_archive(folder / "tiny.keras", model)


def test_mutated_keras_files_load_or_give_one_error_line(keras_bases, tmp_path):
    h5_file, archive = keras_bases
    failures, refused = [], 0
    for case in range(KERAS_CASES):
        rng = random.Random(SEED + 10_000 + case)
        if case % 3 == 2:
            path = tmp_path / f"case{case}.keras"
            if rng.random() < 0.3:
                shutil.copy(archive, path)
                _mutate_bytes(path, rng)
            else:
                _mutate_archive(archive, path, rng, tmp_path)
        else:
            path = tmp_path / f"case{case}.h5"
            shutil.copy(h5_file, path)
            _mutate_bytes(path, rng) if rng.random() < 0.25 else _mutate_h5(path, rng, "model_weights")
        model = tiny_resnet_v2()
        try:
            load_keras_weights(model, path)
            assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()), \
                "loaded weights that are not finite"
        except ReslabError as exc:
            refused += 1
            if "\n" in str(exc):
                failures.append(f"case {case}: not one line: {str(exc)[:300]!r}")
        except Exception as exc:
            failures.append(f"case {case}: {type(exc).__name__}: {str(exc)[:200]}")
        path.unlink()
    assert not failures, "\n".join(failures)
    assert refused > KERAS_CASES // 2


# ---------------------------------------------------------------- PNG and JPEG files, every decoder

# Runs in a process of its own, so that a decoder that crashes the process (as torchvision's
# PNG decoder did) fails this test with the file it was on, rather than ending the session.
IMAGE_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from reslab.data.files import ImageList, verify_files
    from reslab.inference.predict import load_images
    folder = Path(sys.argv[1])
    files = sorted(str(p) for p in folder.iterdir())
    report = {}
    for decoder in ("auto", "torchvision", "torchcodec", "pil"):
        for channels in (1, 3):
            print("decoding with", decoder, "for", channels, "channel(s)", flush=True)
            meta = {"in_channels": channels, "image_size": [16, 16],
                    "preprocess": {"image_size": 16, "resize_size": 18, "center_crop": True, "decoder": decoder}}
            loaded = load_images([str(folder)], meta)
            assert loaded.images.shape[1:] == (channels, 16, 16)
            report[f"{decoder}/{channels}/predict"] = [loaded.names, [what for what, _ in loaded.skipped]]
        images = ImageList.of(folder, [Path(f).name for f in files], [0] * len(files))
        bad = [b.path for b in verify_files(images, decoder, workers=0)]
        report[f"{decoder}/dataset"] = [[f for f in files if f not in bad], bad]
    print(json.dumps(report))
""")


def _image_bases() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(SEED)
    pixels = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    bases = []
    for mode, fmt, options in [("RGB", "PNG", {}), ("L", "PNG", {}), ("P", "PNG", {}), ("RGBA", "PNG", {}),
                               ("I;16", "PNG", {}), ("RGB", "JPEG", {}), ("L", "JPEG", {}),
                               ("RGB", "JPEG", {"progressive": True})]:
        image = Image.fromarray(pixels, "RGB")
        image = image.convert("I").point(lambda v: v * 200).convert("I;16") if mode == "I;16" else image.convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        bases.append((fmt.lower(), buffer.getvalue()))
    return bases


def _mutate_image(fmt: str, data: bytes, rng: random.Random) -> bytes:
    action = rng.random()
    if fmt == "png" and action < 0.4:  # inside a chunk, its CRC fixed: the damage reaches the decoder
        chunks = png_chunks(data)
        index = rng.randrange(len(chunks))
        kind, body = chunks[index]
        body = bytearray(body)
        if kind == b"IHDR" and rng.random() < 0.5:
            body[0:8] = rng.choice([b"\x00\x00\xea\x60\x00\x00\xea\x60", b"\x00\x00\x1b\x58\x00\x00\x1b\x58",
                                    b"\x00\x00\x00\x00\x00\x00\x00\x10", b"\x7f\xff\xff\xff\x00\x00\x00\x01"])
        elif kind == b"IDAT" and rng.random() < 0.5:
            body[-4:] = bytes(b ^ 0xFF for b in body[-4:])  # the zlib data check
        else:
            for _ in range(rng.randint(1, 4)):
                if body:
                    body[rng.randrange(len(body))] = rng.randrange(256)
        chunks[index] = (kind, bytes(body))
        return png_from_chunks(chunks)
    data = bytearray(data)
    if action < 0.65:
        for _ in range(rng.randint(1, 10)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif action < 0.8:
        del data[rng.randrange(2, len(data)):]
    elif action < 0.9:
        start = rng.randrange(len(data))
        del data[start:start + rng.randint(1, 64)]
    else:
        start = rng.randrange(len(data))
        data[start:start] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(data)


def test_mutated_images_are_decoded_or_skipped_and_listed_under_every_decoder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    bases = _image_bases()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(folder / "good.png")  # so that predict has one image
    for case in range(IMAGE_CASES):
        rng = random.Random(SEED + 20_000 + case)
        fmt, data = bases[case % len(bases)]
        (folder / f"case{case:03d}.{'jpg' if fmt == 'jpeg' else 'png'}").write_bytes(_mutate_image(fmt, data, rng))
    result = subprocess.run([sys.executable, "-c", IMAGE_WORKER, str(folder)], capture_output=True, text=True,
                            timeout=300, check=False)
    progress = [line for line in result.stdout.splitlines() if line.startswith("decoding with")]
    assert result.returncode == 0, f"exit {result.returncode}, {progress[-1:]}: {result.stderr[-500:]}"
    report = json.loads(result.stdout.splitlines()[-1])
    every = sorted(str(p) for p in folder.iterdir())
    skipped_somewhere = set()
    for key, (decoded, skipped) in report.items():
        assert sorted(decoded + skipped) == every, key  # each file decoded, or skipped and listed
        assert str(folder / "good.png") in decoded and str(folder / "good.png") not in skipped, key
        skipped_somewhere.update(skipped)
    assert len(skipped_somewhere) > IMAGE_CASES // 4  # the mutations do reach the decoders
