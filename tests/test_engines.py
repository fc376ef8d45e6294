"""CPU inference engines (``reslab bench RUN``) and the torch.export (.pt2) export: every engine
gives the eager model's logits (int8 its predictions, mostly), the bench has a row per engine
and batch size, and a .pt2 file runs any batch size."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reslab.errors import ReslabError
from reslab.evaluate.runner import load_for_evaluation
from reslab.inference.engines import bench_engines, build_engines, cmd_bench_engines, score_engines, training_sample
from reslab.inference.export import export_checkpoint
from reslab.inference.predict import load_model
from reslab.train.loop import train

from conftest import quick_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """ResNet-8 trained for two epochs on the digits (a few seconds)."""
    return train(quick_config(tmp_path_factory.mktemp("engines"), "output.name=r8"), progress=False).run_dir


def digits(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- .pt2


def test_pt2_export_round_trips_for_any_batch_size(run_dir, tmp_path):
    result = export_checkpoint(run_dir, "pt2", tmp_path / "r8.pt2")
    assert result.path == tmp_path / "r8.pt2" and result.max_abs_diff <= 1e-4
    extra = {"reslab.json": ""}
    program = torch.export.load(str(tmp_path / "r8.pt2"), extra_files=extra).module()
    model, _ = load_model(run_dir, "cpu")
    for batch in (1, 5):  # neither is the batch of 2 the export traced with
        images = digits(batch, batch)
        with torch.inference_mode():
            assert torch.allclose(program(images), model(images), atol=1e-4)
    assert json.loads(extra["reslab.json"])["architecture"] == "resnet8"


def test_torchscript_export_points_to_pt2(run_dir, tmp_path):
    described = export_checkpoint(run_dir, "torchscript", tmp_path / "r8.pt").describe()
    assert "PyTorch deprecates TorchScript" in described and "--format pt2" in described


# ---------------------------------------------------------------- engines


def test_calibration_images_are_training_images_as_evaluation_prepares_them(run_dir):
    with load_for_evaluation(run_dir, device="cpu") as loaded:
        loader = training_sample(loaded.bundle, 40, seed=3, batch_size=16)
        images = torch.cat([batch for batch, _ in loader])
        train = loaded.bundle.train
        pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(3))[:40].sort().values
        mean, std = loaded.meta["mean"][0], loaded.meta["std"][0]
        expected = (train.images[pick].float() / 255 - mean) / std  # no crop, no flip: evaluation's view
    assert images.shape == (40, 1, 8, 8)
    assert torch.allclose(images, expected, atol=1e-5)


def test_onnxruntime_gives_eager_logits_and_int8_mostly_its_predictions(run_dir, tmp_path):
    with load_for_evaluation(run_dir, device="cpu") as loaded:
        engines, int8 = build_engines(loaded, ["eager", "onnxruntime", "int8"], tmp_path, calibration_images=200,
                                      log=lambda line: None)
        scores = dict(zip([e.label for e in engines], score_engines(engines, loaded)))
        images = digits(7, 0)
        eager = engines[0].run(images)
        for engine in engines[1:]:
            assert engine.run(images).shape == eager.shape == (7, 10)
    assert [e.label for e in engines][-2:] == ["onnxruntime", "int8"]
    assert scores["onnxruntime"]["max_abs_logit_difference"] <= 1e-4
    assert scores["onnxruntime"]["agreement_with_eager"] == 1.0
    assert scores["int8"]["agreement_with_eager"] >= 0.9  # quantization moves a few borderline images
    assert abs(scores["int8"]["accuracy"] - scores["eager"]["accuracy"]) <= 0.05
    assert int8["calibration_images"] == 200 and int8["format"] == "QDQ" and int8["per_channel"]


def test_eager_also_runs_in_the_runs_bf16_where_the_cpu_has_it(run_dir, tmp_path):
    from reslab.precision import resolve_precision

    if resolve_precision("auto", torch.device("cpu")) != "bf16":
        pytest.skip("this CPU does not compute bf16 natively")
    with load_for_evaluation(run_dir, device="cpu") as loaded:
        loaded.config.train.precision = "bf16"
        engines, _ = build_engines(loaded, ["eager"], tmp_path)
        images = digits(4, 1)
        fp32, bf16 = engines[0].run(images), engines[1].run(images)
    assert [e.label for e in engines] == ["eager", "eager bf16"]
    assert bf16.dtype == torch.float32 and torch.allclose(fp32, bf16, atol=0.1 * fp32.abs().max().item())


@pytest.mark.slow
def test_compiled_engine_gives_eager_logits(run_dir, tmp_path):
    with load_for_evaluation(run_dir, device="cpu") as loaded:
        engines, _ = build_engines(loaded, ["compiled"], tmp_path)
        for batch in (1, 5):
            images = digits(batch, batch)
            assert torch.allclose(engines[1].run(images), engines[0].run(images), atol=1e-4)
    assert [e.label for e in engines] == ["eager", "compiled"]


# ---------------------------------------------------------------- the bench


def test_bench_has_a_row_per_engine_and_batch_with_speed_and_accuracy(run_dir, tmp_path, capsys):
    args = SimpleNamespace(run=str(run_dir), models=None, device="auto", engines="eager,onnxruntime,int8",
                           batch_sizes="1,4", images=60, data_root=None, warmup=1, repeats=2, threads=None,
                           json=str(tmp_path / "engines.json"))
    assert cmd_bench_engines(args) == 0
    out = capsys.readouterr().out
    bench = json.loads((tmp_path / "engines.json").read_text())
    rows = bench["results"]
    assert [(r["engine"], r["batch_size"]) for r in rows] == [
        (engine, batch) for engine in ("eager", "onnxruntime", "int8") for batch in (1, 4)]
    for row in rows:
        assert row["images_per_second"] > 0 and 0 <= row["accuracy"] <= 1 and row["test_images"] == 60
        assert np.isfinite(row["accuracy_drop_vs_eager"]) and row["speedup_vs_eager"] > 0
    assert all(r["speedup_vs_eager"] == 1 and r["accuracy_drop_vs_eager"] == 0 for r in rows if r["engine"] == "eager")
    assert isinstance(bench["environment"]["cpu_flags"], list) and bench["int8"]["calibration_images"] > 0
    assert "drop vs eager fp32" in out and "int8: ONNX Runtime static quantization" in out


@pytest.mark.slow
def test_bench_covers_every_engine(run_dir):
    bench = bench_engines(run_dir, batch_sizes=[1, 3], images=30, warmup=1, repeats=1, log=lambda line: None)
    engines = {r["engine"] for r in bench["results"]}
    assert engines == {"eager", "compiled", "onnxruntime", "int8"}
    assert all(r["images_per_second"] > 0 for r in bench["results"])


@pytest.mark.parametrize("arguments, message", [
    ({"engines": ["eager", "tensorrt"]}, "--engines must be some of"),
    ({"batch_sizes": [0]}, "--batch-sizes must be"),
    ({"images": 0}, "--images must be at least 1"),
])
def test_bench_refuses_bad_arguments_in_one_line(run_dir, arguments, message):
    with pytest.raises(ReslabError, match=message):
        bench_engines(run_dir, **arguments)
