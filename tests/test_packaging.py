"""Packaging: the optional extras and what a missing one tells the user."""

import re
import sys
import tomllib
from pathlib import Path

import pytest

import reslab
from reslab.extras import EXTRAS, install_hint

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(reslab.__file__).parent


def test_every_extra_named_in_a_hint_is_declared_with_its_packages():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        assert extra in declared, extra
        names = {re.split(r"[<>=\[ ]", requirement)[0].lower() for requirement in declared[extra]}
        assert set(packages.lower().split()) <= names, (extra, packages, names)


def test_no_message_offers_an_install_from_pypi_where_reslab_is_not_published():
    """``pip install 'reslab[tune]'`` fails: reslab is installed from its clone."""
    offenders = [f"{path.relative_to(SOURCE)}:{number}"
                 for path in SOURCE.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"pip install '?reslab\[", line)]
    assert not offenders


def test_a_missing_extra_names_the_command_that_works_from_a_clone(monkeypatch):
    from reslab import ReslabError
    from reslab.data.coco import load_annotations

    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)  # as if not installed
    with pytest.raises(ReslabError) as error:
        load_annotations(Path("instances.json"), [])
    assert str(error.value) == f"reading COCO needs pycocotools: {install_hint('coco')}"
    assert "pip install -e '.[coco]'" in str(error.value)


@pytest.mark.numerics
def test_the_kernels_asked_for_are_the_kernels_used():
    """``make test-isa``'s second pass asks for AVX2 kernels; the pass means nothing unless
    PyTorch obeys."""
    import os

    import torch

    asked = os.environ.get("ATEN_CPU_CAPABILITY")
    used = torch.backends.cpu.get_cpu_capability()
    assert used in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX"} or used.startswith(("SVE", "NEON"))
    if asked:
        assert used == asked.upper()
