"""The typed config: YAML, overrides, validation, recipes; values and settings no run could
use refused in one line; ``reslab config`` and the key reference."""

import pytest
import yaml

from reslab import ReslabError
from reslab.config import RunConfig, apply_overrides, from_dict, load, recipe_names, validate
from reslab.train.losses import build_criterion

from conftest import assert_one_error_line, run_cli


def test_defaults_are_the_papers_cifar_recipe():
    config = RunConfig()
    assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert config.schedule.milestones == [32000, 48000] and config.train.max_iters == 64000
    assert config.train.batch_size == 128


def test_built_in_python_and_from_yaml_agree(tmp_path):
    config = RunConfig()
    config.model.name = "resnet56"
    config.train.epochs = 3
    path = tmp_path / "c.yaml"
    config.save(path)
    assert load(path).to_dict() == config.to_dict()


def test_overrides_parse_values_as_yaml():
    config = apply_overrides(RunConfig(), ["train.epochs=5", "schedule.milestones=[10, 20]", "optim.lr=1e-3",
                                           "train.max_iters=null", "model.name=plain20"])
    assert config.train.epochs == 5 and config.schedule.milestones == [10, 20]
    assert config.optim.lr == 0.001 and config.train.max_iters is None and config.model.name == "plain20"


def test_unknown_keys_are_refused_by_name_with_a_suggestion():
    with pytest.raises(ReslabError, match=r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"):
        apply_overrides(RunConfig(), ["train.epoch=3"])
    with pytest.raises(ReslabError, match="unknown config section 'trian'"):
        from_dict({"trian": {"epochs": 3}})


@pytest.mark.parametrize("override,message", [
    ("train.epochs=abc", "'train.epochs' must be int"),
    ("train.batch_size=0", "'train.batch_size' must be at least 1"),
    ("optim.lr=-1", "'optim.lr' must be a positive number"),
    ("optim.name=rmsprop", "'optim.name' must be one of sgd, adam, adamw"),
    ("schedule.milestones=[20, 10]", "'schedule.milestones' must be increasing"),
    ("train.precision=fp8", "'train.precision' must be one of"),
    ("data.name=imagenet22k", "'data.name' must be one of"),
    ("model.shortcut=C", "'model.shortcut' must be one of A, B"),
    ("output.name=../x", "'output.name' must be a plain folder name"),
    ("train", "not of the form section.key=value"),
    ("train.seed=-1", "'train.seed' must be in"),
    ("data.split_seed=99999999999", "'data.split_seed' must be in"),
    ("optim.lr=.inf", "'optim.lr' must be a finite number"),
])
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ReslabError, match=message.replace("[", r"\[")):
        validate(apply_overrides(RunConfig(), [override]))


def test_every_shipped_recipe_loads_and_validates():
    names = recipe_names()
    assert "demo-digits" in names and "paper-cifar10-resnet110" in names and "paper-cifar10-plain56" in names
    for name in names:
        load(name)


def test_paper_recipe_for_resnet110_warms_up_at_001():
    config = load("paper-cifar10-resnet110")
    assert config.schedule.warmup == "constant" and config.schedule.warmup_lr == 0.01
    assert config.data.val_size == 5000 and config.augment.crop_padding == 4


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ReslabError, match="neither a file nor a shipped recipe"):
        load("paper-cifar10-resnet21")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ReslabError, match="not valid YAML"):
        load(bad)
    with pytest.raises(ReslabError, match="does not exist"):
        load(tmp_path / "missing.yaml")


def test_saved_config_is_plain_yaml(tmp_path):
    RunConfig().save(tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert data["model"]["name"] == "resnet20" and data["optim"]["betas"] == [0.9, 0.999]


def test_text_fields_keep_text_that_yaml_would_read_as_booleans_or_numbers():
    config = apply_overrides(RunConfig(), ["output.name=no", "model.freeze=2", "model.pretrained=1.5"])
    assert config.output.name == "no" and config.model.freeze == "2" and config.model.pretrained == "1.5"


# ---------------------------------------------------------------- values and settings no run could use


@pytest.mark.parametrize("override, fragment", [
    ("data.val_size=inf", "finite"), ("data.test_size=.inf", "finite"), ("augment.mixup=inf", "finite"),
    ("schedule.min_lr=nan", "finite"), ("output.name=" + "x" * 300, "at most 200 bytes"),
    ("optim.lr=" + "[" * 5000 + "]" * 5000, "optim.lr"),
])
def test_config_values_no_run_could_use_are_one_error_line(tmp_path, override, fragment, capsys):
    assert_one_error_line(run_cli(capsys, "train", "--config", "demo-digits", "--out", tmp_path, override), fragment)


def test_yaml_aliases_and_deep_nesting_are_refused_in_a_config_file(tmp_path, capsys):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)) + "train: {epochs: *i}\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    assert_one_error_line(run_cli(capsys, "train", "--config", tmp_path / "bomb.yaml"), "aliases")
    (tmp_path / "deep.yaml").write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_error_line(run_cli(capsys, "train", "--config", tmp_path / "deep.yaml"), "nested more than")


def test_settings_that_would_be_silently_ignored_are_refused(tmp_path, capsys):
    with pytest.raises(ReslabError, match="warms up by itself"):
        load("demo-digits", ["schedule.name=onecycle", "schedule.warmup=linear", "schedule.warmup_iters=10"])
    with pytest.raises(ReslabError, match="label_smoothing is for cross-entropy"):
        build_criterion("bce", multi_label=True, label_smoothing=0.1)
    first = run_cli(capsys, "train", "--config", "demo-digits", "--model", "resnet8", "--epochs", "1", "--out",
                    tmp_path, "--name", "once")
    assert first.code == 0, first.err
    again = run_cli(capsys, "train", "--resume", tmp_path / "once", "--config", "demo-digits")
    assert again.code == 2 and "--config cannot be combined with --resume" in again.err


# ---------------------------------------------------------------- other documents parsed by the same rules


def test_parse_fields_types_a_document_section_as_config_keys_are_typed():
    from dataclasses import dataclass, field
    from typing import Any, Literal

    from reslab.config import parse_fields

    @dataclass
    class Inner:
        size: int
        mode: Literal["a", "b"] = "a"

    @dataclass
    class Outer:
        inner: Inner
        scale: float = 1.0
        names: list[str] = field(default_factory=list)
        free: Any = None

    parsed = parse_fields(Outer, {"inner": {"size": 8.0, "mode": "b"}, "scale": 2, "free": {"x": [1]}}, "doc")
    assert parsed == Outer(Inner(8, "b"), 2.0, [], {"x": [1]})
    assert parse_fields(Outer, {"inner": {"size": 1}, "extra": 1}, "doc", ignore_unknown=True).inner.size == 1
    refusals = [({"inner": {"size": 1, "mod": "a"}},
                 "unknown config key 'doc.inner.mod' (did you mean 'doc.inner.mode'?)"),
                ({"inner": "big"}, "config key 'doc.inner' must be a mapping of keys to values, got 'big'"),
                ({"inner": {"size": "8"}}, "config key 'doc.inner.size' must be int, got '8'"),
                ({"inner": {"size": 1, "mode": 1}}, "config key 'doc.inner.mode' must be one of a, b, got 1"),
                ({"inner": {}}, "config key 'doc.inner.size' is missing"),
                ({"inner": {"size": 1}, "scale": float("nan")}, "config key 'doc.scale' must be a finite number"),
                ({"inner": {"size": 1}, "extra": 1}, "unknown config key 'doc.extra'")]
    for data, message in refusals:
        with pytest.raises(ReslabError) as caught:
            parse_fields(Outer, data, "doc")
        assert str(caught.value).startswith(message), str(caught.value)


def test_config_field_declares_bounds_a_converter_and_empty_keys_for_parse_fields():
    from dataclasses import dataclass

    from reslab.config import config_field, parse_fields

    def two_names(value):
        if not isinstance(value, str) or value.count("-") != 1:
            raise ValueError("must be two names, e.g. a-b")
        return value.split("-")

    @dataclass
    class Settings:
        count: int = config_field(1, least=1, most=10)
        seed: int = config_field(0, least=0, most=2**63 - 1)
        names: list[str] = config_field(default_factory=list, null_is_default=True)
        pair: list[str] = config_field(default_factory=lambda: ["a", "b"], convert=two_names)

    assert parse_fields(Settings, {"count": 10, "names": None, "pair": "x-y"}, "doc") == Settings(10, 0, [], ["x", "y"])
    base = Settings(count=3)
    assert parse_fields(Settings, {"seed": 7}, "doc", base=base) == Settings(3, 7)  # keys not given: base's
    refusals = [({"count": 0}, "config key 'doc.count' must be at least 1 and at most 10, got 0"),
                ({"seed": -1}, "config key 'doc.seed' must be at least 0 and at most 2**63-1, got -1"),
                ({"seed": 2**20000}, "config key 'doc.seed' must be at least 0 and at most 2**63-1, got an integer"),
                ({"pair": "xyz"}, "config key 'doc.pair' must be two names, e.g. a-b, got 'xyz'")]
    for data, message in refusals:
        with pytest.raises(ReslabError) as caught:
            parse_fields(Settings, data, "doc")
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)


# ---------------------------------------------------------------- reslab config and the key reference


def test_every_config_key_has_help_read_from_its_comment():
    import dataclasses

    from reslab.config_help import field_help

    for section in dataclasses.fields(RunConfig):
        cls = type(getattr(RunConfig(), section.name))
        helps = field_help(cls)
        assert [f.name for f in dataclasses.fields(cls) if not helps.get(f.name)] == [], section.name
    assert "sized to the training split" in field_help(type(RunConfig().train))["max_iters"]  # a continued comment


@pytest.mark.parametrize("recipe", recipe_names())
def test_reslab_config_prints_yaml_that_loads_back_to_the_same_config(recipe, tmp_path, capsys):
    from reslab.cli import main

    assert main(["config", recipe, "train.seed=7"]) == 0
    printed = capsys.readouterr().out
    assert "  # " in printed  # each key's help
    (tmp_path / "resolved.yaml").write_text(printed)
    assert load(tmp_path / "resolved.yaml") == load(recipe, ["train.seed=7"])


def test_reslab_config_without_a_recipe_shows_what_a_bare_run_uses(capsys):
    from reslab.cli import main

    assert main(["config", "train.epochs=3"]) == 0
    assert capsys.readouterr().out.startswith("# reslab config scratch train.epochs=3")


def test_the_key_reference_in_docs_is_generated_from_the_config(capsys):
    from pathlib import Path

    from reslab.config_help import key_reference

    reference = (Path(__file__).resolve().parents[1] / "docs" / "config-keys.md").read_text()
    assert reference == key_reference(), "regenerate it: reslab config --reference > docs/config-keys.md"
    assert "| `train.time_limit` |" in reference


def test_reslab_recipes_lists_studies_and_spaces_too(capsys):
    from reslab.cli import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "  demo-digits" in out and "  digits-depth" in out and "spaces (reslab tune NAME):\n  digits" in out
