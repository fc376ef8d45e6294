"""The package's imports point one way: shared helpers <- models <- data <- evaluate <- train
<- experiments <- report / inference <- commands <- cli, and no two modules import each other
(directly or round a longer circle). Read from the source with ``ast``: imports inside
functions count too. The slow or optional libraries load where they are used, and no module
chooses matplotlib's backend (a notebook's own choice survives training)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import matplotlib

import reslab
from reslab.train.loop import train

from conftest import quick_config

PACKAGE = Path(reslab.__file__).parent

# Layer of each top-level part; a module may import its own layer and those below.
LAYERS = {
    "models": 1, "data": 2, "evaluate": 3, "train": 4, "experiments": 5, "report": 6, "inference": 6,
    "commands": 7, "cli": 8, "__main__": 9,
}
SHARED = 0  # the top-level helper modules: errors, config, runfs, device, precision, figures, ...


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def exists(name: str) -> bool:
    return is_package(name) or (PACKAGE.parent / Path(*name.split("."))).with_suffix(".py").is_file()


def imports_of(path: Path) -> set[str]:
    """The reslab modules ``path`` imports (a name imported from a package that is itself a
    module counts as that module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("reslab"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("reslab"):
                target = node.module
            else:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if exists(submodule) else target)
    found.discard(name)
    return found


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return SHARED - 1  # the package's own facade (reslab/__init__.py): exempt
    return LAYERS.get(parts[1], SHARED)


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, targets in graph().items():
        if layer(name) < SHARED:
            continue
        for target in targets:
            if target == "reslab":
                continue  # the package's version string
            same_part = target.split(".")[:2] == name.split(".")[:2]
            if layer(target) > layer(name) or (layer(target) == layer(name) > SHARED and not same_part):
                upward.append(f"{name} imports {target}")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circles():
    edges = graph()
    circles = set()

    def visit(name: str, path: list[str]) -> None:
        for target in edges.get(name, ()):
            if target in path:
                circle = path[path.index(target):]
                # A package importing its own submodules (its __init__) is how packages work.
                if not all(other.startswith(target + ".") or target.startswith(other + ".") or other == target
                           for other in circle):
                    start = circle.index(min(circle))
                    circles.add(" -> ".join(circle[start:] + circle[:start] + [min(circle)]))
            elif len(path) < 12:
                visit(target, path + [target])

    for module in edges:
        visit(module, [module])
    assert not circles, "\n".join(sorted(circles))


def test_the_layer_walk_sees_the_imports_it_judges():
    # The checks above could pass by reading nothing; they read the loop's real imports.
    loop = imports_of(PACKAGE / "train" / "loop.py")
    assert {"reslab.evaluate.predict", "reslab.data", "reslab.train.run_folder", "reslab.config"} <= loop
    assert (layer("reslab.train.loop") > layer("reslab.evaluate.task") > layer("reslab.data.files")
            > layer("reslab.models"))


# Libraries that take seconds to import (scikit-learn pulls in SciPy; torchvision pulls in
# torch._dynamo) or are optional: imported where they are used, so that a command which
# fails on its input, or never draws or scores, does not wait for them.
LOADED_ON_USE = ("matplotlib", "sklearn", "scipy", "optuna", "pandas", "h5py", "keras", "tensorboard", "torchvision")


def test_no_module_loads_the_slow_or_optional_libraries_on_import():
    names = [m.name for m in pkgutil.walk_packages(reslab.__path__, "reslab.") if m.name != "reslab.__main__"]
    assert len(names) > 60 and "reslab.evaluate.runner" in names and "reslab.train.loop" in names
    code = (f"import sys\nimport {', '.join(names)}\n"
            f"print(' '.join(m for m in {LOADED_ON_USE!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"importing reslab's modules loaded {loaded}"


def test_training_leaves_matplotlibs_backend_alone(tmp_path):
    import reslab

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's own choice (Agg is what reslab once forced)
    try:
        train(quick_config(tmp_path, "train.epochs=1"), progress=False)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    # Importing a module is not enough to switch a backend once it is cached: read the source too.
    # The one exception: Optuna's matplotlib plots are pyplot figures, which the tuning report
    # must close through pyplot (it never chooses a backend either).
    for path in Path(reslab.__file__).parent.rglob("*.py"):
        if path.relative_to(Path(reslab.__file__).parent).as_posix() == "report/tune.py":
            assert "matplotlib.use(" not in path.read_text()
            continue
        text = path.read_text()
        assert "matplotlib.use(" not in text and "import pyplot" not in text and "matplotlib.pyplot" not in text, path
