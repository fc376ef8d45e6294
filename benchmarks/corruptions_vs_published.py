"""reslab's on-the-fly corruptions against the published CIFAR-10-C generator, on the same
images and the same classifier: is a corruption error measured by reslab the one
CIFAR-10-C's generator would give?

The published generator is ``make_cifar_c.py`` of hendrycks/robustness (ImageNet-C/create_c/),
read from a checkout given by ``--published`` (the folder holding the file, or the checkout's
root). Its distortion functions are run as they are: only the part of the file above its
"End Distortions" line is executed (below it the file loads CIFAR-10 and writes the dataset),
with three adapters for the libraries of today, none of which changes what a function
computes: ``np.float_`` (gone in NumPy 2) is float64, ``np.fromstring`` of bytes (gone) is
``np.frombuffer``, and scikit-image's ``gaussian(..., multichannel=True)`` (gone in 0.19) is
``channel_axis=-1``. It needs OpenCV, Wand with ImageMagick, SciPy and scikit-image
(``pip install opencv-python-headless Wand``; ``apt-get install libmagickwand-dev``). Its frost
reads ./frost1.png .. ./frost5.jpg: the photographs are taken from the checkout, else from the
imagecorruptions package, and it runs in a temporary folder that holds them.

Images: ``--images`` Fashion-MNIST test images (reslab's deterministic subset for ``--seed``),
28x28 grey padded with 2 black pixels to 32x32 and copied to three channels, CIFAR's shape;
both generators corrupt exactly these uint8 images, at every severity. Classifier: a reslab
run trained on Fashion-MNIST (``--run``); a corrupted 32x32x3 image is turned back into its
input by the ITU-R 601 luma (the weights of Pillow's "L") and the centre 28x28 crop, the same
for both generators' images.

Per corruption: the corruption error summed over severities, reslab / published (the "CE
ratio", 1.00 = the same), the same ratio at severity 1 and at severity 5 alone, the mean
|change| of the pixels at severity 1 in grey levels for each generator, and the 95% noise of
the summed ratio from the paired differences per image (two draws of the same generator differ
by about as much; reslab reuses an image's draws across severities, so its severities err
together and the noise is per image, not per image and severity). A row is marked when its
CE ratio is outside +-3%. ``--repeats R`` averages R draws of both (seeds seed..seed+R-1),
which shrinks that noise: at 500 images one draw of glass blur or elastic can be 6-10% off
with no difference in the algorithm (given the same random numbers glass blur is bit-exact,
and elastic differs by one level on 0.3% of the pixels).

    python benchmarks/corruptions_vs_published.py --published ~/src/robustness --run runs/resnet8-fm \\
        [--images 500] [--repeats 4] [--corruptions all] [--json FILE]

A classifier in a few minutes on the CPU:
    reslab train --config fast-fashion-mnist-resnet20 --model resnet8 --epochs 4 train.tta=false --out runs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks beside this one

from reslab.data import load_splits
from reslab.data.corruptions import CIFAR_10_C, CORRUPTIONS, SEVERITIES, corrupt, corruption_names, frost_source
from reslab.errors import ReslabError
from reslab.evaluate.robustness import choose_images

from common import cpu_flags, run_script, write_figures

MARKER = "# /////////////// End Distortions ///////////////"
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
TOLERANCE = 0.03


def generator_file(path: Path) -> Path:
    for candidate in (path, path / "make_cifar_c.py", path / "ImageNet-C" / "create_c" / "make_cifar_c.py"):
        if candidate.is_file() and candidate.name == "make_cifar_c.py":
            return candidate
    raise ReslabError(f"no make_cifar_c.py in {path}; give a checkout of hendrycks/robustness or the folder "
                      "ImageNet-C/create_c of one")


def load_published(path: Path) -> dict:
    """The published distortion functions, by name, run on today's libraries (see the docstring)."""
    source = path.read_text()
    if MARKER not in source:
        raise ReslabError(f"{path} has no '{MARKER}' line: not the published make_cifar_c.py")
    for module in ("cv2", "wand.image", "skimage", "scipy"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ReslabError(f"the published generator needs {module}: pip install opencv-python-headless Wand "
                              "scikit-image scipy (and apt-get install libmagickwand-dev)")
    import skimage.filters

    if not hasattr(np, "float_"):
        np.float_ = np.float64
    gaussian = skimage.filters.gaussian
    if getattr(gaussian, "__wrapped_for_multichannel__", False) is False:
        def gaussian_with_multichannel(image, sigma=1, *args, multichannel=None, **kwargs):
            if multichannel:
                kwargs["channel_axis"] = -1
            return gaussian(image, sigma, *args, **kwargs)

        gaussian_with_multichannel.__wrapped_for_multichannel__ = True
        skimage.filters.gaussian = gaussian_with_multichannel
    numpy_today = types.ModuleType("numpy")
    numpy_today.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    numpy_today.fromstring = lambda data, dtype=float: np.frombuffer(data, dtype)
    namespace = {"__name__": "make_cifar_c", "__file__": str(path)}
    with contextlib.redirect_stdout(sys.stderr):
        exec(compile(source[: source.index(MARKER)], str(path), "exec"), namespace)
    namespace["np"] = numpy_today
    missing = [name for name in CORRUPTIONS if name not in namespace]
    if missing:
        raise ReslabError(f"{path} defines no {', '.join(missing)}")
    return namespace


def frost_folder(checkout: Path) -> Path | None:
    """Where the published frost photographs are: in the checkout, else in imagecorruptions."""
    for found in checkout.rglob("frost1.png"):
        return found.parent
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
        if (folder / "frost1.png").is_file():
            return folder
    return None


def fashion_mnist(run: Path, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` test images of the run's Fashion-MNIST as uint8 (N, 3, 32, 32), and their labels."""
    from reslab.config import from_dict
    from reslab.inference.predict import load_model

    _, meta = load_model(run)
    config = from_dict(meta["config"]).data
    test = load_splits(config).test
    chosen = choose_images(len(test.labels), count, seed)
    images = test.images[chosen]
    if images.shape[1:] != (1, 28, 28):
        raise ReslabError(f"{run} was not trained on 28x28 grey images (its test images are {tuple(images.shape[1:])})")
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    return padded.expand(-1, 3, -1, -1).contiguous(), test.labels[chosen]


def classifier(run: Path):
    from reslab.inference.predict import load_model, normalize

    model, meta = load_model(run)

    @torch.inference_mode()
    def predict(images: torch.Tensor) -> torch.Tensor:
        """Predicted classes of uint8 (N, 3, 32, 32) images: luma, centre 28x28, the run's network."""
        luma = (images.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        crop = luma.round().clamp(0, 255).to(torch.uint8)[:, :, 2:30, 2:30]
        return torch.cat([model(normalize(part, meta)).argmax(1) for part in crop.split(256)])

    return predict


def published_images(functions: dict, name: str, severity: int, images: torch.Tensor, seed: int) -> torch.Tensor:
    from PIL import Image

    np.random.seed(seed * 1000 + CORRUPTIONS.index(name) * 10 + severity)
    out = [np.uint8(functions[name](Image.fromarray(image), severity))
           for image in images.permute(0, 2, 3, 1).numpy()]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def compare(functions: dict, predict, images: torch.Tensor, labels: torch.Tensor, seed: int, repeats: int,
            names: list[str]) -> dict:
    rows = {}
    indices = list(range(len(images)))
    for name in names:
        started = time.perf_counter()
        row = {"reslab": {}, "published": {}, "change_s1": {}}
        difference = torch.zeros(len(images))  # per image: reslab's wrong answers less the published's
        for severity in SEVERITIES:
            wrong = {"reslab": 0, "published": 0}
            for repeat in range(repeats):
                ours = corrupt(images, name, severity, seed=seed + repeat, indices=indices)
                theirs = published_images(functions, name, severity, images, seed + repeat)
                right_ours, right_theirs = predict(ours) == labels, predict(theirs) == labels
                wrong["reslab"] += int((~right_ours).sum())
                wrong["published"] += int((~right_theirs).sum())
                difference += right_theirs.float() - right_ours.float()
                if severity == 1 and repeat == 0:
                    for label, corrupted in (("reslab", ours), ("published", theirs)):
                        row["change_s1"][label] = float((corrupted.float() - images.float()).abs().mean())
            for label in wrong:
                row[label][str(severity)] = wrong[label] / (len(images) * repeats)
        row["difference_square_sum"] = float(difference.square().sum())
        row["seconds"] = time.perf_counter() - started
        rows[name] = row
        print(f"  {name}: {row['seconds']:.0f} s", file=sys.stderr)
    return rows


def summary(rows: dict, count: int) -> dict:
    table = {}
    for name, row in rows.items():
        ours, theirs = sum(row["reslab"].values()), sum(row["published"].values())
        # The images are independent, an image's severities are not (reslab draws the same noise
        # for each): the summed difference has a variance of the sum over images of its square.
        noise = 1.96 * math.sqrt(row["difference_square_sum"]) / (count * theirs) if theirs else None
        table[name] = {
            "ce_ratio": ours / theirs if theirs else None,
            "ratio_s1": row["reslab"]["1"] / row["published"]["1"] if row["published"]["1"] else None,
            "ratio_s5": row["reslab"]["5"] / row["published"]["5"] if row["published"]["5"] else None,
            "noise95": noise,
            "change_s1_reslab": row["change_s1"]["reslab"], "change_s1_published": row["change_s1"]["published"],
            "error_reslab": row["reslab"], "error_published": row["published"],
        }
    return table


def print_table(table: dict, clean_error: float, settings: dict) -> None:
    def ratio(value):
        return "   -" if value is None else f"{value:.2f}"

    print(f"reslab vs published CIFAR-10-C generator: {settings['images']} Fashion-MNIST test images as 32x32x3, "
          f"classifier {settings['run']} (clean error {100 * clean_error:.1f}%), {settings['repeats']} draw(s) each; "
          f"frost: {settings['frost']}")
    print(f"CPU: {settings['cpu']}")
    header = (f"{'corruption':<18} {'CE ratio':>8} {'noise95':>7} {'s1':>5} {'s5':>5} {'|d| s1 reslab':>13} "
              f"{'published':>9}   error % s1..s5 reslab / published")
    print(header)
    print("-" * len(header))
    for name, row in table.items():
        flag = "" if row["ce_ratio"] is not None and abs(row["ce_ratio"] - 1) <= TOLERANCE else "  <- outside 3%"
        errors = " ".join(f"{100 * row['error_reslab'][s]:.1f}/{100 * row['error_published'][s]:.1f}"
                          for s in row["error_reslab"])
        noise = "-" if row["noise95"] is None else f"{row['noise95']:.2f}"
        print(f"{name:<18} {ratio(row['ce_ratio']):>8} {noise:>7} {ratio(row['ratio_s1']):>5} "
              f"{ratio(row['ratio_s5']):>5} {row['change_s1_reslab']:>13.1f} {row['change_s1_published']:>9.1f}   "
              f"{errors}{flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--published", required=True, type=Path, help="a checkout of hendrycks/robustness "
                        "(or its ImageNet-C/create_c folder) holding make_cifar_c.py")
    parser.add_argument("--run", required=True, type=Path, help="a reslab run trained on Fashion-MNIST")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--corruptions", default="all", help="all, a category or names (default all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    path = generator_file(args.published.expanduser())
    photos = frost_folder(args.published.expanduser())
    if photos is None:
        raise ReslabError("the published frost photographs are neither in the checkout nor installed "
                          "(pip install imagecorruptions --no-deps)")
    functions = load_published(path)
    predict = classifier(args.run)
    images, labels = fashion_mnist(args.run, args.images, args.seed)
    clean_error = float((predict(images) != labels).float().mean())
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        for name in FROST_FILES:
            if (photos / name).is_file():
                shutil.copy(photos / name, Path(folder) / name)
        os.chdir(folder)  # the published frost opens ./frost1.png ...
        try:
            rows = compare(functions, predict, images, labels, args.seed, args.repeats,
                           corruption_names(args.corruptions))
        finally:
            os.chdir(here)
    table = summary(rows, len(images) * args.repeats)
    settings = {"images": len(images), "seed": args.seed, "repeats": args.repeats, "run": str(args.run),
                "published": str(path), "frost": frost_source(), "frost_photographs_of_published": str(photos),
                "parameters": CIFAR_10_C.name, "cpu": cpu_flags(), "torch": torch.__version__}
    print_table(table, clean_error, settings)
    if args.json:
        write_figures(args.json, {"settings": settings, "clean_error": clean_error, "corruptions": table})


if __name__ == "__main__":
    run_script(main, "corruptions_vs_published")
