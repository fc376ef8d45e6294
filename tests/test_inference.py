"""Using trained models: predictions on image files, Grad-CAM, export with parity checks,
and the web server's handling of good and bad uploads."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reslab.cli import build_parser
from reslab.config import from_dict, load
from reslab.data import DeviceLoader, load_splits
from reslab.errors import ReslabError
from reslab.evaluate.predict import predict
from reslab.inference.export import check_parity
from reslab.inference.gradcam import GradCAM, gallery, grad_cam
from reslab.inference.predict import load_images, load_model
from reslab.inference.server import make_server
from reslab.models import StagedModel
from reslab.train.loop import train

from conftest import png_with_a_bad_data_check, quick_config, run_cli, write_hub_folder, write_photos

pytestmark = pytest.mark.numerics  # outputs compared across kernels: run with both ISAs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ResNet-8 trained for two epochs on the digits, its test split, and the logits the
    in-memory pipeline (the training loop's own loader) gives for it."""
    folder = tmp_path_factory.mktemp("inference")
    result = train(quick_config(folder, "output.name=r8"), progress=False)
    model, meta = load_model(result.run_dir, "cpu")
    test = load_splits(from_dict(meta["config"]).data).test
    loader = DeviceLoader(test, 512, torch.device("cpu"), meta["mean"], meta["std"], train=False)
    logits, _ = predict(model, loader, torch.device("cpu"))
    return SimpleNamespace(run_dir=result.run_dir, model=model, meta=meta, test=test, logits=logits)


def write_digits(folder: Path, images: torch.Tensor) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(image[0].numpy(), "L").save(paths[-1])
    return paths


# ---------------------------------------------------------------- predict


def test_predict_on_png_files_gives_the_in_memory_predictions(trained, tmp_path, capsys):
    write_digits(tmp_path / "digits", trained.test.images[:24])
    code, out, _ = run_cli(capsys, "predict", trained.run_dir, tmp_path / "digits", "--format", "json",
                           "--top-k", "3", "--device", "cpu")
    assert code == 0
    results = json.loads(out)["results"]
    expected = torch.softmax(trained.logits[:24], 1)
    assert [Path(r["image"]).name for r in results] == [f"{i:03d}.png" for i in range(24)]
    for result, probs in zip(results, expected):
        top = result["predictions"]
        assert [p["index"] for p in top] == probs.topk(3).indices.tolist()
        assert [p["class"] for p in top] == [trained.meta["classes"][p["index"]] for p in top]
        assert [p["probability"] for p in top] == pytest.approx(probs.topk(3).values.tolist(), abs=1e-5)


def test_predict_table_and_csv_have_one_row_per_image_and_rank(trained, tmp_path, capsys):
    write_digits(tmp_path, trained.test.images[:2])
    code, table, _ = run_cli(capsys, "predict", trained.run_dir, tmp_path / "000.png", tmp_path / "001.png",
                             "--top-k", "2", "--device", "cpu")
    assert code == 0
    lines = table.strip().splitlines()
    assert lines[0].split() == ["image", "rank", "class", "probability"] and len(lines) == 1 + 2 * 2
    assert lines[1].startswith(str(tmp_path / "000.png")) and lines[2].split()[0] == "2"
    code, csv_text, _ = run_cli(capsys, "predict", trained.run_dir, tmp_path / "*.png", "--format", "csv",
                                "--top-k", "2", "--device", "cpu")
    rows = csv_text.strip().splitlines()
    assert rows[0] == "image,rank,class,index,probability" and len(rows) == 1 + 2 * 2
    assert rows[1].startswith(f"{tmp_path / '000.png'},1,")


def test_images_are_converted_to_the_checkpoints_channels_and_size(trained, tmp_path):
    digit = trained.test.images[0, 0].numpy()
    Image.fromarray(digit, "L").save(tmp_path / "grey.png")
    Image.fromarray(np.stack([digit] * 3, axis=2), "RGB").save(tmp_path / "colour.png")
    Image.fromarray(digit, "L").resize((32, 40)).save(tmp_path / "large.jpg")
    loaded = load_images([str(tmp_path / "grey.png"), str(tmp_path / "colour.png"), str(tmp_path / "*.jpg")],
                         trained.meta)
    assert loaded.images.shape == (3, 1, 8, 8) and loaded.images.dtype == torch.uint8
    assert torch.equal(loaded.images[0], trained.test.images[0])
    assert torch.equal(loaded.images[1], loaded.images[0])  # RGB with R=G=B becomes the same grey image
    assert loaded.skipped == []


def test_predict_skips_unreadable_files_and_says_which(trained, tmp_path, capsys):
    write_digits(tmp_path, trained.test.images[:1])
    (tmp_path / "notes.png").write_text("not an image")
    code, out, err = run_cli(capsys, "predict", trained.run_dir, tmp_path, "--format", "json", "--device", "cpu")
    assert code == 0
    assert [Path(r["image"]).name for r in json.loads(out)["results"]] == ["000.png"]
    assert "skipped" in err and "notes.png" in err and "not an image" in err


def test_predict_with_no_readable_image_is_one_error_line(trained, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    code, out, err = run_cli(capsys, "predict", trained.run_dir, tmp_path / "notes.png", tmp_path / "missing.png")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("reslab: error: no image to predict")
    assert "missing.png: no such file" in err and "notes.png: not an image" in err


def test_multi_label_checkpoint_reports_every_label_over_the_threshold(trained, tmp_path, capsys):
    state = torch.load(trained.run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["meta"]["task"] = "multi-label"
    torch.save(state, tmp_path / "multi.pt")
    write_digits(tmp_path / "digits", trained.test.images[:8])
    code, out, _ = run_cli(capsys, "predict", tmp_path / "multi.pt", tmp_path / "digits", "--format", "json",
                           "--threshold", "0.3", "--device", "cpu")
    assert code == 0
    summary = json.loads(out)
    assert summary["task"] == "multi-label" and summary["threshold"] == 0.3
    sigmoid = torch.sigmoid(trained.logits[:8])
    for result, probs in zip(summary["results"], sigmoid):
        assert {p["index"] for p in result["predictions"]} == set(torch.nonzero(probs > 0.3).flatten().tolist())


def test_threshold_on_a_single_label_checkpoint_is_refused(trained, tmp_path, capsys):
    write_digits(tmp_path, trained.test.images[:1])
    code, _, err = run_cli(capsys, "predict", trained.run_dir, tmp_path, "--threshold", "0.5")
    assert code == 2 and "single-label" in err


def test_predict_gives_the_top1_that_evaluation_gives_on_the_same_files(tmp_path):
    from reslab.data import build_data
    from reslab.evaluate.predict import predict
    from reslab.inference.predict import load_images, load_model, predict_images

    write_photos(tmp_path / "data" / "train", 8, seed=0)
    write_photos(tmp_path / "data" / "test", 5, seed=1)
    config = load("demo-digits", ["data.name=folder", f"data.root={tmp_path / 'data'}", "data.image_size=24",
                                  "data.center_crop=true", "data.workers=0", "data.val_size=0", "model.name=resnet8",
                                  "train.epochs=1", "train.batch_size=4", f"output.dir={tmp_path / 'runs'}",
                                  "output.plots=false"])
    result = train(config, progress=False)
    model, meta = load_model(result.run_dir, "cpu")
    assert meta["preprocess"]["center_crop"] and meta["preprocess"]["resize_size"] == round(24 / 0.875)

    bundle = build_data(config.data, config.augment, batch_size=4, eval_batch_size=4, mean_std=(meta["mean"],
                                                                                                 meta["std"]))
    logits, _ = predict(model, bundle.test, torch.device("cpu"))
    paths = [bundle.test.dataset.images.path(i) for i in range(len(bundle.test.dataset))]
    predicted = predict_images(model, meta, load_images(paths, meta), top_k=1)
    assert [row["predictions"][0]["class"] for row in predicted] == [meta["classes"][i] for i in logits.argmax(1)]
    scores = torch.tensor([row["predictions"][0]["probability"] for row in predicted])
    assert torch.allclose(scores, logits.softmax(1).max(1).values, atol=1e-5)


# ---------------------------------------------------------------- Grad-CAM


class TwoColourNet(StagedModel):
    """Class 0's evidence is red, class 1's green; nothing else counts. One stage of 1x1
    convs copying the colours, then 2x2 pooling, so the map is half the input's size."""

    stage_names = ("layer1",)

    def __init__(self):
        super().__init__()
        self.num_features = 2
        self.layer1 = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.AvgPool2d(2))
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.layer1[0].weight.copy_(torch.eye(3)[:2, :, None, None])
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def forward_stem(self, x):
        return x


def two_squares() -> torch.Tensor:
    """Bright red square top-left (more evidence), dimmer green square bottom-right."""
    image = torch.zeros(1, 3, 16, 16)
    image[0, 0, 2:6, 2:6] = 1.0
    image[0, 1, 10:14, 10:14] = 0.5
    return image


def test_grad_cam_peaks_where_the_explained_class_has_its_evidence():
    model = TwoColourNet()
    predicted = GradCAM(model)(two_squares())
    chosen = GradCAM(model)(two_squares(), target=1)
    assert predicted.maps.shape == (1, 16, 16)  # upsampled from the 8x8 feature map
    assert predicted.targets.tolist() == [0] and chosen.targets.tolist() == [1]
    for explained, quadrant in ((predicted, (slice(0, 8), slice(0, 8))), (chosen, (slice(8, 16), slice(8, 16)))):
        heat = explained.maps[0]
        row, col = divmod(int(heat.argmax()), 16)
        assert quadrant[0].start <= row < quadrant[0].stop and quadrant[1].start <= col < quadrant[1].stop
        assert heat[quadrant].sum() > 0.9 * heat.sum()
        assert heat.max() == pytest.approx(1.0) and heat.min() >= 0


def test_grad_cam_of_a_trained_model_has_the_input_size_and_removes_its_hooks(trained):
    stage = trained.model.stages()["layer3"]
    explained = grad_cam(trained.model, trained.meta, trained.test.images[:5])
    assert explained.maps.shape == (5, 8, 8)
    assert explained.maps.min() >= 0 and explained.maps.amax((1, 2)).tolist() == pytest.approx([1.0] * 5)
    assert explained.targets.tolist() == trained.logits[:5].argmax(1).tolist()
    assert not stage._forward_hooks and not stage._backward_hooks
    assert all(p.grad is None for p in trained.model.parameters())


def test_predict_explain_writes_one_overlay_per_image(trained, tmp_path, capsys):
    write_digits(tmp_path / "digits", trained.test.images[:3])
    code, _, err = run_cli(capsys, "predict", trained.run_dir, tmp_path / "digits", "--explain", tmp_path / "cams",
                           "--class", "7", "--device", "cpu")
    assert code == 0 and "3 PNG files" in err
    overlays = sorted((tmp_path / "cams").iterdir())
    assert [p.name for p in overlays] == ["000.gradcam.png", "001.gradcam.png", "002.gradcam.png"]
    with Image.open(overlays[0]) as picture:
        assert picture.mode == "RGB" and min(picture.size) >= 224


def test_gallery_shows_the_most_confident_mistakes(trained, tmp_path):
    images, labels = trained.test.images[:120], trained.test.labels[:120]
    wrong = int((trained.logits[:120].argmax(1) != labels).sum())
    assert wrong > 0  # two epochs leave mistakes to show
    shown = gallery(trained.model, trained.meta, images, labels, tmp_path / "gallery.png", max_items=4)
    assert shown == min(4, wrong)
    with Image.open(tmp_path / "gallery.png") as picture:
        assert picture.format == "PNG" and picture.width > 400
    assert gallery(trained.model, trained.meta, images[:1], trained.logits[:1].argmax(1),
                   tmp_path / "none.png") == 0


# ---------------------------------------------------------------- export


def max_difference(out: str) -> float:
    return float(re.search(r"max abs difference of logits (\S+)", out).group(1))


def test_onnx_export_matches_pytorch_for_any_batch_size(trained, tmp_path, capsys):
    import onnx
    import onnxruntime

    code, out, _ = run_cli(capsys, "export", trained.run_dir, "--format", "onnx", "--output", tmp_path / "r8.onnx")
    assert code == 0 and max_difference(out) <= 1e-4
    print(f"ONNX max abs diff (export's check): {max_difference(out):.3g}")
    session = onnxruntime.InferenceSession(str(tmp_path / "r8.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    images = trained.test.images[:37].float().sub(255 * trained.meta["mean"][0]).div(255 * trained.meta["std"][0])
    (logits,) = session.run(None, {"images": images.numpy()})
    assert np.abs(logits - trained.logits[:37].numpy()).max() <= 1e-4
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "r8.onnx")).metadata_props}
    assert metadata["classes"] == trained.meta["classes"] and metadata["architecture"] == "resnet8"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch(trained, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "export", trained.run_dir, "--format", "torchscript",
                           "--output", tmp_path / "r8.pt")
    assert code == 0 and max_difference(out) <= 1e-4
    extra = {"reslab.json": ""}
    scripted = torch.jit.load(str(tmp_path / "r8.pt"), _extra_files=extra)
    images = trained.test.images[:5].float().sub(255 * trained.meta["mean"][0]).div(255 * trained.meta["std"][0])
    assert torch.allclose(scripted(images), trained.logits[:5], atol=1e-4)
    assert json.loads(extra["reslab.json"])["image_size"] == [8, 8]


def test_safetensors_export_rebuilds_the_model_from_its_json(trained, tmp_path, capsys):
    from safetensors.torch import load_file

    from reslab.models import create_model

    code, out, _ = run_cli(capsys, "export", trained.run_dir, "--format", "safetensors",
                           "--output", tmp_path / "r8.safetensors")
    assert code == 0 and max_difference(out) == 0
    info = json.loads((tmp_path / "r8.json").read_text())
    assert {k: info[k] for k in ("architecture", "classes", "image_size", "mean", "std", "task")} == {
        "architecture": "resnet8", "classes": trained.meta["classes"], "image_size": [8, 8],
        "mean": trained.meta["mean"], "std": trained.meta["std"], "task": "single-label"}
    model = create_model(info["architecture"], num_classes=len(info["classes"]), in_channels=info["in_channels"],
                         **info["model_options"])
    model.load_state_dict(load_file(str(tmp_path / "r8.safetensors")))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.model.state_dict().values()))


def test_an_export_that_disagrees_with_pytorch_is_refused():
    meta = {"image_size": [4, 4], "in_channels": 1}
    reference = lambda x: x.flatten(1).numpy()  # noqa: E731
    with pytest.raises(ReslabError, match="disagrees with PyTorch: max abs difference of logits 0.001"):
        check_parity(reference, lambda x: reference(x) + 1e-3, meta, "the ONNX model")
    close = check_parity(reference, lambda x: reference(x) + 1e-5, meta, "the ONNX model")
    assert close == pytest.approx(1e-5, rel=1e-2)


def test_export_of_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", tmp_path / "nothing.pt", "--format", "onnx")
    assert code == 2 and err.startswith("reslab: error:") and "does not exist" in err


# ---------------------------------------------------------------- the web server


LIMIT_MB = 0.05  # small, so the oversize test sends little


@pytest.fixture(scope="module")
def server(trained):
    server = make_server(trained.model, trained.meta, "127.0.0.1", 0, top_k=3, max_upload_mb=LIMIT_MB, quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[0].numpy(), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_serve_binds_to_localhost_by_default():
    assert build_parser().parse_args(["serve", "run"]).host == "127.0.0.1"


def test_server_predicts_an_uploaded_image(trained, server):
    status, kind, body = request(server, "POST", "/api/predict", png_bytes(trained.test.images[3]),
                                 {"Content-Type": "image/png"})
    assert status == 200 and kind == "application/json"
    answer = json.loads(body)
    probs = torch.softmax(trained.logits[3], 0)
    assert [p["index"] for p in answer["predictions"]] == probs.topk(3).indices.tolist()
    assert answer["predictions"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert answer["explained_index"] == int(probs.argmax())
    with Image.open(io.BytesIO(base64.b64decode(answer["gradcam"].split(",", 1)[1]))) as overlay:
        assert overlay.format == "PNG"


def test_server_accepts_a_multipart_form_and_a_chosen_class(trained, server):
    boundary = "reslab-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"d.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png_bytes(trained.test.images[0]) + \
        f"\r\n--{boundary}--\r\n".encode()
    status, _, answer = request(server, "POST", "/api/predict?class=5", body,
                                {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and json.loads(answer)["explained_class"] == "5"


def test_server_refuses_bytes_that_are_not_an_image(server):
    status, kind, body = request(server, "POST", "/api/predict", b"%PDF-1.4 definitely not a picture",
                                 {"Content-Type": "image/png"})
    assert status == 400 and kind == "application/json"
    assert "not an image" in json.loads(body)["error"]


def test_server_refuses_an_upload_over_the_limit_before_reading_it(server):
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=20)
    try:
        connection.putrequest("POST", "/api/predict")
        connection.putheader("Content-Length", str(int(LIMIT_MB * 1024 * 1024) + 1))
        connection.endheaders()  # the body never comes: the answer must not wait for it
        response = connection.getresponse()
        assert response.status == 413
        assert "over the limit" in json.loads(response.read())["error"]
    finally:
        connection.close()


def test_server_refuses_an_oversized_body_sent_in_full(server):
    status, _, body = request(server, "POST", "/api/predict", b"\0" * int(LIMIT_MB * 1024 * 1024 * 2))
    assert status == 413 and "over the limit" in json.loads(body)["error"]


def test_server_refuses_an_unknown_class_and_unknown_paths(trained, server):
    status, _, body = request(server, "POST", "/api/predict?class=eleven", png_bytes(trained.test.images[0]))
    assert status == 400 and "unknown class" in json.loads(body)["error"]
    assert request(server, "GET", "/../../etc/passwd")[0] == 404
    assert request(server, "POST", "/upload", b"x")[0] == 404


def test_server_serves_the_page_and_the_model_info(trained, server):
    status, kind, page = request(server, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b'type="file"' in page
    status, _, info = request(server, "GET", "/api/info")
    assert status == 200 and json.loads(info)["classes"] == trained.meta["classes"]


# ---------------------------------------------------------------- bad input: pipes, crashing decoders, NaN


@pytest.fixture(scope="module")
def rgb_hub(tmp_path_factory):
    """An RGB hub folder whose run decoded with data.decoder=torchvision, a good PNG and a PNG
    that crashes torchvision.io's PNG decoder."""
    folder = tmp_path_factory.mktemp("rgb-hub")
    hub = write_hub_folder(folder / "hub", channels=3, image_size=16, num_classes=3, dataset=None,
                           decoder="torchvision")
    Image.new("RGB", (24, 16), (200, 30, 90)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(png_with_a_bad_data_check())
    return SimpleNamespace(hub=hub, good=folder / "good.png", bad=folder / "bad.png")


def _in_a_subprocess(*argv, script: str | None = None) -> subprocess.CompletedProcess:
    """A command in a process of its own: a decoder crash kills it, not the test session."""
    command = [sys.executable, "-c", script, *map(str, argv)] if script else [sys.executable, "-m", "reslab",
                                                                               *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_no_decoder_choice_crashes_the_process_on_a_png_with_a_bad_data_check(rgb_hub):
    script = """
import sys
from reslab.data.decode import BadImage, decode
data = open(sys.argv[1], "rb").read()
for name in ("auto", "torchvision", "torchcodec", "pil", "torchvision-jpeg"):
    try:
        decode(data, name)
        print(name, "decoded")
    except BadImage as exc:
        print(name, "BadImage", exc)
"""
    result = _in_a_subprocess(rgb_hub.bad, script=script)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # -11 was torchvision's SIGSEGV
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[name, "BadImage"] for name in
                                                    ("auto", "torchvision", "torchcodec", "pil", "torchvision-jpeg")]


def test_predict_with_a_torchvision_run_skips_and_lists_the_crashing_png(rgb_hub):
    result = _in_a_subprocess("predict", rgb_hub.hub, rgb_hub.bad, rgb_hub.good, "--format", "json", "--device", "cpu")
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert [r["image"] for r in json.loads(result.stdout)["results"]] == [str(rgb_hub.good)]
    assert f"skipped {rgb_hub.bad}: damaged image data" in result.stderr


def test_the_server_of_a_torchvision_run_answers_400_to_the_crashing_png_and_stays_up(rgb_hub):
    script = """
import http.client, json, sys, threading
from reslab.inference.predict import load_model
from reslab.inference.server import make_server
model, meta = load_model(sys.argv[1], "cpu")
server = make_server(model, meta, port=0, quiet=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
for path in sys.argv[2:]:
    body = open(path, "rb").read()
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request("POST", "/api/predict", body, {"Content-Length": str(len(body))})
    response = connection.getresponse()
    print(response.status, json.loads(response.read()).get("error", "predicted"))
server.shutdown()
"""
    result = _in_a_subprocess(rgb_hub.hub, rgb_hub.bad, rgb_hub.good, script=script)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    first, second = result.stdout.splitlines()
    assert first.startswith("400 refused: damaged image data")
    assert second == "200 predicted"


def test_predict_skips_a_pipe_named_like_an_image_instead_of_waiting_on_it(rgb_hub, tmp_path, capsys):
    pipe = tmp_path / "camera.png"
    os.mkfifo(pipe)

    waited = []

    def unblock():  # only if predict opened the pipe and waits for a writer: let it go on, and fail below
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO when nobody reads it
            waited.append(True)
        except OSError:
            pass

    rescue = threading.Timer(20, unblock)
    rescue.daemon = True
    rescue.start()
    try:
        code, out, err = run_cli(capsys, "predict", rgb_hub.hub, pipe, rgb_hub.good, "--format", "json",
                                 "--device", "cpu")
    finally:
        rescue.cancel()
    assert not waited, "predict waited for a writer on the pipe"
    assert code == 0, err
    assert [r["image"] for r in json.loads(out)["results"]] == [str(rgb_hub.good)]
    assert f"skipped {pipe}: not a regular file" in err
    code, _, err = run_cli(capsys, "predict", rgb_hub.hub, pipe, "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "not a regular file" in err


def test_the_server_refuses_outputs_that_are_not_finite_rather_than_ranking_them(rgb_hub):
    from reslab.inference.server import ModelService

    model, meta = load_model(rgb_hub.hub, "cpu")
    with torch.no_grad():
        model.fc.weight.fill_(3e38)  # finite weights whose logits overflow to infinity
    with pytest.raises(ReslabError, match="outputs are not finite"):
        ModelService(model, meta).predict(rgb_hub.good.read_bytes())


def test_large_inputs_go_in_batches_of_as_many_pixels_as_256_images_of_224():
    from reslab.evaluate.runner import batch_for

    assert batch_for(256, (224, 224)) == 256 and batch_for(512, (8, 8)) == 512
    assert batch_for(256, (1024, 1024)) == 12 and batch_for(256, (512, 512)) == 49
    assert batch_for(256, (8192, 8192)) == 1  # one image at least
