"""Seeded fuzzing of the documents that cross a trust boundary: a run folder's metrics.json,
config.yaml, dataset.json and history.csv; a study's study.json and study YAML; a run's
calibration.json; the launcher's jobs.json and its jobs' process records; a tuning space
and its study.db; and the HTTP requests ``reslab serve`` answers.

Each mutated document must give a result, or exit 2 with one ``reslab: error:`` line and
no traceback. No file but the command's own outputs changes; nothing outside the folder is
read (a finished run beside the study, holding ``SECRET``, is never reported and its
content never shown; a ``!!python/`` tag never runs); memory stays bounded (a sparse file of
768 MB is refused before it is read). Training is replaced by a stand-in that records the
call, so a mutated study or space that is still valid trains nothing. The server answers
every mutated request with 2xx or 4xx (501 and 505 where HTTP says so: an unknown method,
an HTTP version it does not speak) and stays up.

The cases are drawn from ``SEED``; a failure names its test and case, and
``random.Random(SEED + OFFSET + case)`` (each test's offset below) gives that case back.
About 450 cases, a minute and a half on two cores."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import threading
import traceback
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import partial
from pathlib import Path

import pytest
import yaml
from PIL import Image

import reslab.experiments.study as study_module
import reslab.experiments.tune as tune
from reslab.cli import main
from reslab.errors import ReslabError
from reslab.train.run_folder import RunResult

pytestmark = pytest.mark.slow  # some 450 cases, a study trained and calibrated first

SEED = 28
RUN_CASES, RUN_OFFSET = 70, 0
MANIFEST_CASES, MANIFEST_OFFSET = 24, 10_000
STUDY_FILE_CASES, STUDY_FILE_OFFSET = 60, 20_000
JOBS_CASES, JOBS_OFFSET = 60, 30_000
CALIBRATION_CASES, CALIBRATION_OFFSET = 40, 40_000
SPACE_CASES, SPACE_OFFSET = 24, 50_000
STUDY_DB_CASES, STUDY_DB_OFFSET = 24, 60_000
HTTP_CASES, HTTP_OFFSET = 150, 70_000

SECRET = "SECRET-5f0e1d"  # in the finished run kept outside every study: never shown, never reported
CASE_SECONDS = 60  # a case still running after this is a hang
HUGE = 768 << 20  # a sparse file of this size: refused unread, or memory grows by gigabytes
MEMORY_MB = 1536  # the most a test may add to the process's peak memory
CASE_MEMORY_MB = 400  # the most one case may add (a huge document read whole adds twice HUGE)

TINY = ["train.epochs=1", "train.batch_size=64", "data.train_size=200", "data.val_size=60", "data.test_size=60",
        "output.plots=false", "schedule.warmup=none", "train.threads=1", "train.device=cpu"]
STUDY = {"name": "fz", "recipe": "demo-digits", "models": ["resnet8", "plain8"], "seeds": [0],
         "datasets": ["digits"], "variants": {"base": []}, "overrides": TINY, "launcher": {"name": "none"}}
RUNS = ["resnet8-digits-base-seed0", "plain8-digits-base-seed0"]
JOB_RUNS = ["resnet8-digits-seed0", "plain8-digits-seed0"]
SUBMISSION = "20260101-000000-abc123"
SPACE = {"name": "fz", "recipe": "demo-digits", "overrides": TINY, "trials": 3, "metric": "val_accuracy",
         "pruner": "median", "seed": 0, "heartbeat": 30,
         "optim.lr": {"log_uniform": [0.01, 1]}, "optim.weight_decay": {"choice": [1.0e-4, 5.0e-4]},
         "train.label_smoothing": {"uniform": [0, 0.2]}}
METRICS = tune.METRICS
# Where a tuning trial calls train (the worker's module; tune.py itself before it was a package).
try:
    import reslab.experiments.tune.worker as tune_module
except ImportError:
    tune_module = tune


# ---------------------------------------------------------------- what a case must keep


def _cli(*argv) -> tuple[int, str, str]:
    """main() with stdout that refuses what a UTF-8 terminal cannot show (a lone surrogate),
    as a real one does, and stderr that escapes it, as Python's does."""
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in argv])
    return code, out.getvalue().decode(), err.getvalue().decode()


def _contract(code: int, out: str, err: str, allowed=(0, 2)) -> str | None:
    """Why a command's ending breaks the contract, or None."""
    if code not in allowed:
        return f"exit {code}: {err[-300:]!r}"
    if "Traceback" in out or "Traceback" in err:
        return f"a traceback: {err[-300:]!r}"
    if SECRET in out or SECRET in err:
        return "the secret run's content was shown"
    if code == 2:
        lines = err.rstrip("\n").split("\n")
        if sum(line.startswith("reslab: error:") for line in lines) != 1 or not lines[-1].startswith("reslab: error: "):
            return f"not one error line: {err[-300:]!r}"
    return None


class CaseTimeout(BaseException):
    """A case ran past CASE_SECONDS (a BaseException: no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    def expire(signum, frame):
        raise CaseTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _memory_mb(field: str) -> float:
    """The process's resident memory now (VmRSS) or at its peak (VmHWM), in MB."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split(f"{field}:")[1].split()[0]) / 1024
    except (OSError, IndexError):  # no /proc: the peak of the whole process
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start VmHWM again from the memory in use now (Linux 4.0+), so each case has its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


PEAKS: list[float] = []  # each case's peak memory, for the test's bound


def _case(failures: list[str], label: str, body):
    """Run one case: ``body()`` gives (its contract problem or None, its result). A broken
    contract, an exception, a hang or a jump in memory is recorded under the case's label,
    with where an exception came from. Returns the result (None after an exception)."""
    _reset_peak()
    before, result = _memory_mb("VmRSS"), None
    try:
        with _deadline(CASE_SECONDS):
            problem, result = body()
    except (Exception, CaseTimeout) as exc:  # the contract broken: kept, not raised
        frames = traceback.extract_tb(exc.__traceback__)
        own = [f for f in frames if "/reslab/" in f.filename and "/tests/" not in f.filename][-2:]
        shown = [f"{Path(f.filename).name}:{f.lineno}" for f in [*own, *frames[-2:]]]  # reslab's last lines
        where = " <- ".join(reversed(list(dict.fromkeys(shown))))  # and where it was raised
        problem = f"{type(exc).__name__}: {str(exc)[:200]!r} at {where}"
    PEAKS.append(_memory_mb("VmHWM"))
    grown = PEAKS[-1] - before
    if grown > CASE_MEMORY_MB:
        problem = (problem + "; " if problem else "") + f"peak memory grew by {grown:.0f} MB"
    if problem:
        failures.append(f"{label}: {problem}")
    return result


@dataclass
class Ran:
    """How a command ended."""

    code: int
    out: str
    err: str


def _command(argv: list, small_figures: bool = False, check=None) -> tuple[str | None, Ran]:
    """Run reslab with ``argv``: (the contract problem, or ``check(ran)``'s, or None; how it ended)."""
    with pytest.MonkeyPatch.context() as patch:
        if small_figures:
            _small_figures(patch)
        ran = Ran(*_cli(*argv))
    return _contract(ran.code, ran.out, ran.err) or (check(ran) if check else None), ran


def _hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (links not followed) but those whose path
    relative to it matches a ``skip`` pattern."""
    hashes = {}
    for path in Path(folder).rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or not path.is_file() or any(fnmatch(relative, p) for p in skip):
            continue
        with open(path, "rb") as handle:
            hashes[relative] = hashlib.file_digest(handle, "sha256").hexdigest()
    return hashes


def _changed(before: dict, after: dict, new_allowed: bool = False) -> str | None:
    """What changed between two ``_hashes``: a file changed or removed, or (unless allowed) added."""
    touched = sorted(k for k in before if after.get(k) != before[k])
    added = [] if new_allowed else sorted(set(after) - set(before))
    if touched or added:
        return f"files changed: {(touched + added)[:4]}"
    return None


# ---------------------------------------------------------------- mutations


class Raw(str):
    """Text written into a document as it is: a literal that no serializer writes."""


class Dup(dict):
    """A mapping written with one key twice (the second time with another value)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.pairs = pairs


def _deep(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def _odd_values(outside: Path) -> list:
    """Values a careless or hostile document puts where a number, a name or a list belongs."""
    return [None, True, False, 0, -1, 1, 7, 2**31, 2**63, -(2**63) - 1, 10**30, 0.5, -0.0, 5e-324, 1e-300, 1e308,
            -1e308, math.nan, math.inf, -math.inf,
            "", " ", "x", "x" * 100_000, "\x00", "a\x00b", "line\nbreak", "\x1b[2J", "\u202e\u0301", "\ud800",
            "$x^{", "%s%n{0}", "{model}", "<script>alert(1)</script>", "..", ".", "-", "--help", "a,b", "1e-4",
            "NaN", "null", "~", "C:\\Windows", "../../etc/passwd", "../" * 12 + "etc/passwd", "/etc/passwd",
            "/dev/null", "/proc/self/environ", "../../outside/secret-run", "../../outside/secret.txt",
            str(outside / "secret-run"), str(outside / "secret-run" / "metrics.json"),
            [], [None], [[[]]], ["a", 1, None], [0] * 1000, {}, {"": None}, {"a": [1, {"b": None}]}, _deep(60)]


JSON_RAW = [Raw("1" + "0" * 5000), Raw("-" + "9" * 4300), Raw("9" * 4300), Raw("1e999"), Raw("-1e999"), Raw("NaN"),
            Raw("-Infinity"), Raw("-0"), Raw("1E-400"), Raw('"\\ud800"'), Raw('"\\u0000"'), _deep(100_000),
            Raw('"' + "\\u0041" * 50_000 + '"')]


def _yaml_raw(pwned: Path) -> list[Raw]:
    """YAML's own ways of being odd: long integers in other bases, dates, binary, sets,
    aliases (and a small billion laughs), a tag that would run code, unhashable keys."""
    return [Raw("1" + "0" * 5000), Raw("0b" + "1" * 5000), Raw("0x" + "f" * 300), Raw("190:20:30"), Raw("1_000"),
            Raw(".inf"), Raw("-.inf"), Raw(".nan"), Raw("~"), Raw("yes"), Raw("off"), Raw("2001-12-14"),
            Raw("2001-12-14t21:59:43.10-05:00"), Raw("2001-13-45"), Raw("!!binary aGVsbG8="), Raw("!!set {a: null}"),
            Raw("!!omap [{a: 1}]"), Raw("!!float 1e999"), Raw("!!int 0x" + "f" * 200), Raw("[&a [1, 2], *a]"),
            Raw("[&a [x, x, x, x], &b [*a, *a, *a, *a], &c [*b, *b, *b, *b], *c]"),
            Raw(f'!!python/object/apply:os.system ["touch {pwned}"]'), Raw("!!python/name:os.system"),
            Raw(f'!!python/object/new:pathlib.Path ["{pwned}"]'), Raw("!custom x"), Raw("{[1, 2]: 3}"),
            Raw('"' + "x" * 300_000 + '"'), _deep(10_000), Raw('"\\ud800"'), Raw('"\\0"'), Raw("'it''s'"),
            Raw("!!str"), Raw("? [a]")]


def _dump(value, yaml_style: bool = False) -> str:
    """``value`` as JSON (or YAML's flow style, a superset), with Raw text, duplicate keys
    and NaN or Infinity as the format spells them."""
    if isinstance(value, Raw):
        return str(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan" if yaml_style else "NaN"
        if math.isinf(value):
            return ("" if value > 0 else "-") + (".inf" if yaml_style else "Infinity")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # escaped: NUL, newlines and lone surrogates as \u escapes
    if isinstance(value, dict):
        pairs = value.pairs if isinstance(value, Dup) else value.items()
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_dump(v, yaml_style)}" for k, v in pairs) + "}"
    return "[" + ", ".join(_dump(v, yaml_style) for v in value) + "]"


def _paths(node, path=()):
    """Every path into a document, containers included."""
    yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, (*path, key))


def _at(document, path):
    for key in path:
        document = document[key]
    return document


def _mutate_tree(document, rng: random.Random, odd: list, raw: list, prefer: tuple = ()):
    """``document`` (parsed JSON or YAML) after one to three structural changes; most go
    under the ``prefer`` paths, where the commands read."""
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(document))
        preferred = [p for p in paths if p and any(p[:len(q)] == q for q in prefer)]
        path = rng.choice(preferred if preferred and rng.random() < 0.75 else paths)
        if not path:  # the whole document
            document = rng.choice([[], "text", 5, None, [document], {"": document}])
            return document
        *parents, key = path
        parent = _at(document, parents)
        value = parent[key]
        action = rng.random()
        if action < 0.55:
            parent[key] = rng.choice(raw) if raw and rng.random() < 0.25 else rng.choice(odd)
        elif action < 0.65:
            del parent[key]
        elif action < 0.72 and isinstance(parent, dict):  # one key twice: the last change
            duplicated = Dup([*parent.items(), (key, rng.choice(odd))])
            if parents:
                _at(document, parents[:-1])[parents[-1]] = duplicated
                return document
            return duplicated
        elif action < 0.8 and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[key] = value * rng.choice([-1, 0, 1e300, 1e-300, 10**20, 0.5])
        elif action < 0.88 and isinstance(parent, dict):
            parent[str(key) + rng.choice(["_", "s", "X"])] = parent.pop(key)  # a misspelt key
        elif action < 0.94:
            parent[key] = rng.choice([[value], {"value": value}, [value] * 3])
        else:
            parent[key] = _deep(rng.choice([30, 500, 5000]))
    return document


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff"]


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    action = rng.random()
    data = bytearray(data)
    if action < 0.2 and data:
        del data[rng.randrange(len(data)):]
    elif action < 0.4 and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif action < 0.55:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice(INVALID_UTF8)
    elif action < 0.62:
        data = bytearray()
    elif action < 0.68:
        at = rng.randrange(len(data) + 1)
        data[at:at] = b"\x00" * rng.randint(1, 4)
    elif action < 0.74:
        data = bytearray(b"\xef\xbb\xbf" + data if rng.random() < 0.5 else data.decode("latin-1").encode("utf-16"))
    elif action < 0.84:
        data = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    elif action < 0.92:
        data = data * rng.randint(2, 4)
    else:
        data += b"\n" + bytes(rng.choice(b" \t\r\n{}[]:,-#&*!|>'\"%@`") for _ in range(rng.randint(1, 200)))
    return bytes(data)


def _write_document(path: Path, parsed, rng: random.Random, odd: list, raw: list, prefer: tuple, kind: str,
                    huge: bool) -> str:
    """Write a mutated ``parsed`` (a JSON or YAML document) to ``path``; returns the mutation's name."""
    path.unlink(missing_ok=True)  # never write through a link to the base
    if huge:
        with open(path, "wb") as handle:
            handle.write(_dump(parsed).encode())
            handle.truncate(HUGE)  # sparse: costs nothing until someone reads it
        return "huge"
    if rng.random() < 0.25:
        text = yaml.safe_dump(parsed, sort_keys=False) if kind == "yaml" else json.dumps(parsed, indent=2)
        path.write_bytes(_mutate_bytes(text.encode(), rng))
        return "bytes"
    mutated = _mutate_tree(parsed, rng, odd, raw, prefer)
    if kind == "yaml" and not _has_special(mutated) and rng.random() < 0.4:
        text = yaml.safe_dump(mutated, sort_keys=False, allow_unicode=rng.random() < 0.5)  # block style
    else:
        text = _dump(mutated, yaml_style=kind == "yaml")
    path.write_text(text, errors="surrogatepass")
    return "tree"


def _has_special(node) -> bool:
    if isinstance(node, (Raw, Dup)) or (isinstance(node, float) and not math.isfinite(node)):
        return True
    if isinstance(node, dict):
        return any(_has_special(v) for v in node.values())
    return isinstance(node, list) and any(_has_special(v) for v in node)


# ---------------------------------------------------------------- stand-ins for training


class FakeTraining:
    """Stands in for ``train`` where a study or a tuning trial would start one: records the
    call, reports one epoch to the observers (a trial's pruner), writes nothing. Past
    ``limit`` calls in one case it fails, as a broken run would (a budget of 10**9 trials
    must not loop for ever)."""

    def __init__(self, limit: int | None = None):
        self.limit, self.calls = limit, []

    def __call__(self, config, resume=None, progress=True, observers=()):
        self.calls.append((config.model.name, config.train.seed, resume))
        if self.limit is not None and len(self.calls) > self.limit:
            raise ReslabError("fuzz stand-in: no more trainings in this case")
        row = {"epoch": 1, "step": 3, **{metric: 0.5 for metric in METRICS}}
        for observer in observers:
            observer.epoch(3, row)
        return RunResult(Path(config.output.dir) / str(config.output.name), {"test": {"accuracy": 0.5}}, [row])


# ---------------------------------------------------------------- the documents, once


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A study as ``reslab compare`` writes it (two runs of one epoch, one calibrated), its
    study file, a jobs/ folder as the launcher keeps it, a finished tuning study, an image,
    and outside it all a finished run holding SECRET."""
    root = tmp_path_factory.mktemp("fuzz-documents")
    (root / "study.yaml").write_text(yaml.safe_dump({**STUDY, "out": str(root / "study")}, sort_keys=False))
    code, _, err = _cli("compare", root / "study.yaml", "--no-progress", "--no-report")
    assert code == 0, err
    assert _cli("calibrate", root / "study" / RUNS[0], "--device", "cpu")[0] == 0
    Image.new("L", (8, 8), 128).save(root / "image.png")

    secret = root / "outside" / "secret-run"
    shutil.copytree(root / "study" / RUNS[1], secret)
    metrics = json.loads((secret / "metrics.json").read_text())
    (secret / "metrics.json").write_text(json.dumps({**metrics, "model": SECRET, "dataset": SECRET}))
    (root / "outside" / "secret.txt").write_text(f"{SECRET}: {SECRET}\n")

    jobs = root / "jobs-study" / "jobs"
    (jobs / SUBMISSION).mkdir(parents=True)
    records = {JOB_RUNS[0]: {"name": JOB_RUNS[0], "job_id": "99999998", "launcher": "local", "folder": SUBMISSION,
                             "attempt": 1, "submitted": "2026-01-01T00:00:00", "process_start": "12345"},
               JOB_RUNS[1]: {"name": JOB_RUNS[1], "job_id": "77_1", "launcher": "slurm", "folder": SUBMISSION,
                             "attempt": 2, "submitted": "2026-01-01T00:00:00"}}
    (jobs / "jobs.json").write_text(json.dumps({"jobs": records}, indent=2))
    for name, record in records.items():
        (jobs / f"{name}.process.json").write_text(json.dumps({
            "name": name, "host": "node7", "pid": 4242, "child": 4243, "job_id": record["job_id"], "attempt": 1,
            "command": ["python", "-m", "reslab", "train"], "started": "2026-01-01T00:00:01",
            "ended": "2026-01-01T00:01:00", "outcome": "failed", "exit_code": 2}, indent=2))
        (jobs / SUBMISSION / f"{record['job_id']}_0_log.err").write_text(
            "reslab: error: the training loss became nan\nsubmitit ERROR - Submitted job triggered an exception\n"
            "reslab.experiments.jobs.JobFailed: exited with status 2\n")

    tune = root / "tune"
    tune.mkdir()
    (tune / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune_module, "train", FakeTraining())
        code, _, err = _cli("tune", tune / "space.yaml", "--out", tune / "out", "--no-report", "--no-progress")
    assert code == 0 and (tune / "out" / "study.db").is_file(), err
    return root


def _copy(source: Path, target: Path) -> None:
    """A copy of a base folder; checkpoints are hard links (a command that rewrote one in
    place would change the base, which each test checks at its end)."""
    def link_or_copy(src, dst):
        if not src.endswith(".pt"):
            return shutil.copy2(src, dst)
        os.link(src, dst)
        return dst

    shutil.copytree(source, target, copy_function=link_or_copy)


@pytest.fixture
def workspace(bases, tmp_path):
    """The test's folder: cases/ (one folder per case, the working directory for its
    relative paths: "../../outside" is the secret's folder) and outside/ (the secret run)."""
    shutil.copytree(bases / "outside", tmp_path / "outside")
    (tmp_path / "cases").mkdir()
    start, base = _memory_mb("VmRSS"), _hashes(bases, skip=("*/report/*", "*reliability*", "tune/out/*"))
    PEAKS.clear()
    yield tmp_path
    assert _changed(base, _hashes(bases, skip=("*/report/*", "*reliability*", "tune/out/*"))) is None
    grown = max(PEAKS, default=start) - start
    assert grown < MEMORY_MB, f"the test's cases took peak memory {grown:.0f} MB above its start"


def _new_case(workspace: Path, case: int, monkeypatch) -> Path:
    folder = workspace / "cases" / f"case{case:03d}"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _guarded(workspace: Path, folder: Path, skip: tuple[str, ...], command, new_allowed: bool = False):
    """``command()`` (see ``_command``), and what else it broke: a file it changed in the case
    folder (but its outputs, ``skip``) or in outside/, the secret reported, a tag that ran."""
    outside, before = _hashes(workspace / "outside"), _hashes(folder, skip)
    problem, ran = command()
    if problem:
        return problem, ran
    changed = _changed(before, _hashes(folder, skip), new_allowed)
    changed_outside = _changed(outside, _hashes(workspace / "outside"), new_allowed=True)
    if changed or changed_outside:
        return changed or f"outside: {changed_outside}", ran
    for report in folder.rglob("report*.json"):
        if report.stat().st_size < 50 << 20 and SECRET in report.read_text(errors="replace"):
            return f"the secret run is in {report}", ran
    if (workspace / "pwned").exists():
        return "a YAML tag ran code", ran
    return None, ran


def _refused(ran: Ran | None) -> bool:
    return ran is not None and ran.code == 2


# ---------------------------------------------------------------- run folders: report, compare, evaluate


METRICS_READ = [("model",), ("dataset",), ("seed",), ("parameters",), ("macs",), ("epochs",), ("best_epoch",),
                ("train_seconds",), ("images_per_second",), ("peak_memory_mb",), ("test", "accuracy"),
                ("test", "macro_precision"), ("test", "macro_recall"), ("test", "macro_f1"), ("test", "samples"),
                ("test", "per_class"), ("test", "confusion_matrix"), ("test", "reliability"), ("test", "ece"),
                ("device",)]
CSV_ODD = ["nan", "inf", "-inf", "1e999", "", "x", "-1", "9" * 5000, "1" + "0" * 400, "\x00", "0x10", "1_000",
           "١٢", "1e-400", '"', "a,b", "\r"]


def _mutate_history(path: Path, rng: random.Random) -> None:
    text = path.read_text()
    path.unlink()
    if rng.random() < 0.3:
        path.write_bytes(_mutate_bytes(text.encode(), rng))
        return
    rows = list(csv.reader(io.StringIO(text)))
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        if action < 0.6:
            row = rng.randrange(len(rows))
            rows[row][rng.randrange(len(rows[row]))] = rng.choice(CSV_ODD)
        elif action < 0.75:
            column = rng.randrange(len(rows[0]))
            rows = [r[:column] + r[column + 1:] for r in rows]
        elif action < 0.85:
            rows = rows[:1] if rng.random() < 0.5 else rows[1:]
        else:
            rows += [rows[-1]] * rng.choice([1, 100, 5000])
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    path.write_text(buffer.getvalue())


SMALL_FIGURE_MODULES = ("reslab.evaluate.plots", "reslab.report.plots", "reslab.experiments.compare",
                        "reslab.report.tune")


def _small_figures(patch) -> None:
    """save_figure at a tenth of the resolution and without the tight bounding box: every
    artist is still drawn (where odd numbers and text break matplotlib), at a quarter of the
    time. One case in six draws the figures as they are."""
    import importlib

    from reslab.runfs import atomic_write

    def save_small(figure, path):
        atomic_write(Path(path), lambda handle: figure.savefig(handle, format="png", dpi=12))

    for name in SMALL_FIGURE_MODULES:
        patch.setattr(importlib.import_module(name), "save_figure", save_small)


def _run_document_check(command: str, name: str, fake: FakeTraining, ran: Ran) -> str | None:
    if command == "evaluate" and ran.code != 0:
        return f"evaluate depends on {name}: {ran.err[-200:]!r}"
    if command == "compare" and ran.code == 0 and any(resume is None for *_, resume in fake.calls):
        return f"compare trained a finished run from scratch: {fake.calls}"
    return None


def test_mutated_run_documents_give_a_result_or_one_error_line(bases, workspace, monkeypatch):
    """metrics.json, config.yaml, dataset.json and history.csv of a finished run, read by
    ``report RUN``, ``report STUDY``, ``compare STUDY.yaml`` (which reuses the run) and
    ``evaluate RUN`` (which must not depend on them)."""
    odd = _odd_values(workspace / "outside")
    raw = {"json": JSON_RAW, "yaml": _yaml_raw(workspace / "pwned")}
    plan = [("metrics.json", "json", METRICS_READ, ["report", "report", "report", "compare", "study"]),
            ("config.yaml", "yaml", [("optim",), ("train",), ("schedule",), ("augment",), ("output",)],
             ["report", "compare", "compare", "evaluate"]),
            ("dataset.json", "json", [("sizes",)], ["report", "report", "evaluate"]),
            ("history.csv", "csv", (), ["report"])]
    weights = [45, 25, 15, 15]
    failures, refused, fake = [], 0, FakeTraining(limit=10)
    monkeypatch.setattr(study_module, "train", fake)
    for case in range(RUN_CASES):
        rng = random.Random(SEED + RUN_OFFSET + case)
        name, kind, prefer, commands = rng.choices(plan, weights)[0]
        command = rng.choice(commands)
        folder = _new_case(workspace, case, monkeypatch)
        _copy(bases / "study", folder / "study")
        (folder / "study.yaml").write_text(yaml.safe_dump({**STUDY, "out": "study"}, sort_keys=False))
        run = folder / "study" / RUNS[rng.randrange(2)]
        document = run / name
        if kind == "csv":
            _mutate_history(document, rng)
            how = "history"
        else:
            parsed = json.loads(document.read_text()) if kind == "json" else yaml.safe_load(document.read_text())
            how = _write_document(document, parsed, rng, odd, raw[kind], tuple(prefer), kind, huge=case in (1, 2, 3))
        argv = {"report": ["report", run, "--out", folder / "report-out"],
                "study": ["report", folder / "study", "--out", folder / "report-out"],
                "compare": ["compare", folder / "study.yaml", "--no-report", "--no-progress"],
                "evaluate": ["evaluate", run, "--device", "cpu"]}[command]
        fake.calls.clear()
        skip = ("report-out/*", "study/study.json", f"study/{run.name}/{name}", "study/*/reliability*.png")
        run_command = partial(_command, argv, case % 6 != 0, partial(_run_document_check, command, name, fake))
        ran = _case(failures, f"case {case} ({name}, {how}, {command})",
                    partial(_guarded, workspace, folder, skip, run_command))
        refused += _refused(ran)
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert refused > RUN_CASES // 4  # the mutations do reach the checks


# ---------------------------------------------------------------- study.json: report STUDY


def test_mutated_study_manifests_give_a_report_or_one_error_line(bases, workspace, monkeypatch):
    """study.json, which names the study's runs and their variants: ``report STUDY`` reads
    only runs inside the study folder, and a variant is only a label."""
    odd = _odd_values(workspace / "outside")
    failures, refused = [], 0
    for case in range(MANIFEST_CASES):
        rng = random.Random(SEED + MANIFEST_OFFSET + case)
        folder = _new_case(workspace, case, monkeypatch)
        _copy(bases / "study", folder / "study")
        document = folder / "study" / "study.json"
        parsed = json.loads(document.read_text())
        how = _write_document(document, parsed, rng, odd, JSON_RAW, (("runs",),), "json", huge=case == 1)
        run_command = partial(_command, ["report", folder / "study", "--out", folder / "report-out"], case % 6 != 0)
        ran = _case(failures, f"case {case} (study.json, {how})",
                    partial(_guarded, workspace, folder, ("report-out/*", "study/study.json"), run_command))
        refused += _refused(ran)
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert refused > MANIFEST_CASES // 4


# ---------------------------------------------------------------- study files: compare


def test_mutated_study_files_give_a_study_or_one_error_line(bases, workspace, monkeypatch):
    """A study YAML given to ``reslab compare`` (its runs already finished: reused, or new
    ones for the stand-in to "train")."""
    odd = _odd_values(workspace / "outside")
    raw = _yaml_raw(workspace / "pwned")
    failures, refused, trained = [], 0, 0
    fake = FakeTraining(limit=10)
    monkeypatch.setattr(study_module, "train", fake)
    for case in range(STUDY_FILE_CASES):
        rng = random.Random(SEED + STUDY_FILE_OFFSET + case)
        folder = _new_case(workspace, case, monkeypatch)
        _copy(bases / "study", folder / "study")
        document = folder / "study.yaml"
        how = _write_document(document, {**json.loads(json.dumps(STUDY)), "out": "study"}, rng, odd, raw, (),
                              "yaml", huge=case == 1)
        fake.calls.clear()
        run_command = partial(_command, ["compare", document, "--no-report", "--no-progress"])
        # compare writes study.json (and run folders: here none) where the study's out: says
        ran = _case(failures, f"case {case} (study file, {how})",
                    partial(_guarded, workspace, folder, ("*study.json", "study.yaml"), run_command))
        refused += _refused(ran)
        trained += bool(fake.calls)
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert refused > STUDY_FILE_CASES // 4
    # The control: the same document unmutated, with a seed not yet run, reaches training.
    folder = _new_case(workspace, STUDY_FILE_CASES, monkeypatch)
    _copy(bases / "study", folder / "study")
    (folder / "study.yaml").write_text(json.dumps({**STUDY, "out": "study", "seeds": [1]}))  # JSON is YAML
    fake.calls.clear()
    problem, ran = _command(["compare", folder / "study.yaml", "--no-report", "--no-progress"])
    assert problem is None and ran.code == 0 and fake.calls, ran.err[-500:]


# ---------------------------------------------------------------- jobs.json: the launcher's status


def test_mutated_job_records_give_the_jobs_states_or_one_error_line(bases, workspace, monkeypatch):
    """jobs.json and a job's <name>.process.json, read by ``compare --launcher local
    --status`` and by ``compare`` in this process (which first checks that no job runs).
    Nothing is submitted: --status submits nothing, and no record may name a live job."""
    odd = _odd_values(workspace / "outside")
    failures, refused = [], 0
    fake = FakeTraining(limit=10)
    monkeypatch.setattr(study_module, "train", fake)
    import reslab.experiments.launch as launch_module

    def never_submit(*args, **kwargs):
        raise AssertionError("a job would have been submitted")

    monkeypatch.setattr(launch_module, "make_executor", never_submit)
    for case in range(JOBS_CASES):
        rng = random.Random(SEED + JOBS_OFFSET + case)
        folder = _new_case(workspace, case, monkeypatch)
        shutil.copytree(bases / "jobs-study", folder / "jobs-study")
        jobs = folder / "jobs-study" / "jobs"
        document = jobs / ("jobs.json" if rng.random() < 0.75 else f"{rng.choice(JOB_RUNS)}.process.json")
        prefer = (("jobs",),) if document.name == "jobs.json" else (("job_id",), ("outcome",), ("host",))
        how = _write_document(document, json.loads(document.read_text()), rng, odd, JSON_RAW, prefer, "json",
                              huge=case == 1)
        status = rng.random() < 0.6
        argv = ["compare", "--recipe", "demo-digits", "--models", "resnet8,plain8", "--seeds", "0",
                "--out", folder / "jobs-study", *TINY, "--no-report", "--no-progress"]
        argv += ["--launcher", "local", "--status"] if status else []
        skip = ("jobs-study/study.json", "jobs-study/jobs/.lock", f"jobs-study/jobs/{document.name}")
        ran = _case(failures, f"case {case} ({document.name}, {how}, {'status' if status else 'in process'})",
                    partial(_guarded, workspace, folder, skip, partial(_command, argv)))
        refused += _refused(ran)
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert refused > JOBS_CASES // 4


# ---------------------------------------------------------------- calibration.json: evaluate, predict


def _prediction_check(ran: Ran) -> str | None:
    if ran.code != 0:
        return None
    answer = json.loads(ran.out)
    probabilities = [p["probability"] for result in answer["results"] for p in result["predictions"]]
    if not all(0 <= p <= 1 for p in probabilities):
        return f"probabilities {probabilities}"
    temperature = answer.get("temperature")
    if temperature is not None and not 0.01 <= temperature <= 100:
        return f"divided by the temperature {temperature!r}"
    return None


def test_mutated_calibration_files_are_ignored_or_refused_in_one_line(bases, workspace, monkeypatch):
    """calibration.json, whose temperature ``evaluate`` reports and ``predict`` divides the
    logits by: a damaged one is a warning (the probabilities are not scaled) or one error."""
    odd = _odd_values(workspace / "outside")
    failures, scaled = [], 0
    for case in range(CALIBRATION_CASES):
        rng = random.Random(SEED + CALIBRATION_OFFSET + case)
        folder = _new_case(workspace, case, monkeypatch)
        _copy(bases / "study" / RUNS[0], folder / "run")
        document = folder / "run" / "calibration.json"
        how = _write_document(document, json.loads(document.read_text()), rng, odd, JSON_RAW,
                              (("temperature",), ("checkpoint",), ("checkpoint_sha256",)), "json", huge=case == 1)
        command = "evaluate" if case % 5 < 2 else "predict"
        argv = (["evaluate", folder / "run", "--device", "cpu"] if command == "evaluate" else
                ["predict", folder / "run", bases / "image.png", "--format", "json", "--device", "cpu"])
        check = _prediction_check if command == "predict" else None
        ran = _case(failures, f"case {case} (calibration.json, {how}, {command})",
                    partial(_guarded, workspace, folder, ("run/calibration.json", "run/reliability*.png"),
                            partial(_command, argv, check=check)))
        scaled += ran is not None and command == "predict" and ran.code == 0 and '"temperature"' in ran.out
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert 0 < scaled < CALIBRATION_CASES  # some files stay usable, most do not


# ---------------------------------------------------------------- tuning: space files and study.db


def test_mutated_search_spaces_give_a_study_or_one_error_line(bases, workspace, monkeypatch):
    """A space file given to ``reslab tune``: a new study, or the finished one joined."""
    odd = _odd_values(workspace / "outside")
    raw = _yaml_raw(workspace / "pwned")
    failures, refused = [], 0
    fake = FakeTraining(limit=4)
    monkeypatch.setattr(tune_module, "train", fake)
    for case in range(SPACE_CASES):
        rng = random.Random(SEED + SPACE_OFFSET + case)
        folder = _new_case(workspace, case, monkeypatch)
        joined = rng.random() < 0.6
        if joined:
            shutil.copytree(bases / "tune" / "out", folder / "out")
        document = folder / "space.yaml"
        how = _write_document(document, json.loads(json.dumps(SPACE)), rng, odd, raw, (), "yaml", huge=case == 1)
        argv = ["tune", document, "--out", folder / "out", "--no-progress",
                *([] if case % 8 == 0 else ["--no-report"])]
        fake.calls.clear()
        ran = _case(failures, f"case {case} (space file, {how}, {'joined' if joined else 'new'})",
                    partial(_guarded, workspace, folder, ("out/*", "space.yaml"), partial(_command, argv)))
        refused += _refused(ran)
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert refused > SPACE_CASES // 4


STUDY_DB_VALUES = ["null", "true", "1e999", "-1", '""', '"x"', "[]", "{}", '"' + "x" * 10_000 + '"', "NaN",
                   "9" * 5000, '{"a": [1, {"b": null}]}', "[" * 2000 + "]" * 2000, "not json", "\"\\ud800\""]


def _mutate_study_db(path: Path, rng: random.Random) -> str:
    """study.db after a change to what Optuna stored (attributes, values, parameters,
    states, its schema) or to its bytes."""
    action = rng.random()
    if action < 0.35:
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(_mutate_bytes(data, rng))
        return "bytes"
    if action < 0.4:
        with open(path, "r+b") as handle:
            handle.truncate(HUGE)
        return "huge"
    connection = sqlite3.connect(path)
    try:
        value = rng.choice(STUDY_DB_VALUES)
        number = rng.choice([-1, 0, 2, 10**12, 2**63 - 1, 1e308, math.nan, math.inf])
        statement = rng.choice([
            ("UPDATE trial_user_attributes SET value_json = ? WHERE key = ?", (value, rng.choice(
                ["baseline", "run_dir", "worker", "epochs", "seconds", "error"]))),
            ("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (1, 'error', ?)", (value,)),
            ("UPDATE trial_system_attributes SET value_json = ?", (value,)),
            ("INSERT INTO trial_system_attributes (trial_id, key, value_json) VALUES (2, ?, ?)",
             (rng.choice(["failed_trial", "retry_history", "fixed_params"]), value)),
            ("UPDATE study_user_attributes SET value_json = ? WHERE key = 'direction'", (value,)),
            ("UPDATE trial_params SET param_value = ?", (number,)),
            ("UPDATE trial_params SET distribution_json = ?", (value,)),
            ("UPDATE trial_values SET value = ?", (number,)),
            ("UPDATE trial_intermediate_values SET intermediate_value = ?", (number,)),
            ("UPDATE trials SET number = ?", (number if isinstance(number, int) else 0,)),
            ("UPDATE trials SET state = ? WHERE number = 1", (rng.choice(["FAIL", "PRUNED", "WAITING", "X"]),)),
            ("UPDATE study_directions SET direction = ?", (rng.choice(["MINIMIZE", "NOT_SET", "X"]),)),
            ("UPDATE studies SET study_name = ?", (rng.choice(["other", "", "x" * 600]),)),
            ("UPDATE version_info SET schema_version = ?", (rng.choice([1, 99, -1]),)),
            ("UPDATE alembic_version SET version_num = ?", (rng.choice(["v0.0.0", "x", ""]),)),
            (f"DROP TABLE {rng.choice(['trial_values', 'trial_params', 'trials', 'version_info'])}", ()),
            ("DELETE FROM trial_params WHERE trial_id = 1", ()),
        ])
        connection.execute(*statement)
        connection.commit()
        return statement[0].split(" SET")[0].split(" WHERE")[0][:40]
    finally:
        connection.close()


def test_mutated_study_databases_give_a_summary_or_one_error_line(bases, workspace, monkeypatch):
    """The tuning study's study.db (SQLite, as Optuna keeps it), read by ``reslab tune``
    joining its finished study and writing the best recipe, the trials table and report."""
    failures, refused = [], 0
    fake = FakeTraining(limit=4)
    monkeypatch.setattr(tune_module, "train", fake)
    for case in range(STUDY_DB_CASES):
        rng = random.Random(SEED + STUDY_DB_OFFSET + case)
        folder = _new_case(workspace, case, monkeypatch)
        shutil.copytree(bases / "tune" / "out", folder / "out")
        shutil.copy(bases / "tune" / "space.yaml", folder / "space.yaml")
        how = _mutate_study_db(folder / "out" / "study.db", rng)
        argv = ["tune", folder / "space.yaml", "--out", folder / "out", "--no-progress",
                *([] if case % 6 == 0 else ["--no-report"])]
        fake.calls.clear()
        ran = _case(failures, f"case {case} (study.db, {how})",
                    partial(_guarded, workspace, folder, ("out/*",), partial(_command, argv)))
        refused += _refused(ran)
        shutil.rmtree(folder)
    assert not failures, "\n".join(failures)
    assert refused > STUDY_DB_CASES // 8  # Optuna reads most changes to its tables without complaint


# ---------------------------------------------------------------- HTTP: reslab serve


LIMIT_MB = 0.05
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "BREW", "get", "G\x00T",
           "POST\x00", "X" * 300, ""]
TARGETS = ["/", "/api/predict", "/api/info", "/index.html", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
           "//etc/passwd", "/api/predict?class=", "/api/predict?class=99999", "/api/predict?class=%00",
           "/api/predict?class=" + "9" * 5000, "/api/predict?class=-1", "/api/predict?class=%ff%fe",
           "/api/predict?class=1&class=2", "*", "http://evil.example/x", "/\x00", "/" + "a" * 70_000,
           "/api/predict#x", "/static/../../../outside/secret.txt", ""]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1.1", "HTTP/x", "http/1.1", "HTTP/1.10", "", "HTTP/01.1",
            "HTTP/1.1 extra", "HTTP/" + "1" * 500 + ".1"]
LENGTHS = ["-1", "+5", " 5", "5 ", "0x10", "1e3", "9" * 40, "18446744073709551616", "", "abc", "5, 5", "١٢", "²",
           "0", "00000000000000000000012", "\x00"]
CONTENT_TYPES = ["multipart/form-data", "multipart/form-data; boundary=", 'multipart/form-data; boundary=""',
                 "multipart/mixed; boundary=zz", "multipart/form-data; boundary=" + "b" * 5000, "image/png",
                 "text/plain", "application/json", "multipart/form-data; boundary=zz; charset=\xff", "\x00",
                 "multipart/", "multipart/form-data; boundary=zz", "multipart/form-data; boundary=\"z\\\"z\""]


def _multipart(png: bytes, rng: random.Random) -> tuple[bytes, str]:
    boundary = "zz"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"d.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    action = rng.random()
    if action < 0.2:
        part = part[:rng.randrange(len(part))]  # truncated
    elif action < 0.35:
        part = part.replace(b"Content-Type: image/png", b"Content-Transfer-Encoding: base64\r\nContent-Type: image/png")
    elif action < 0.5:
        part = part.replace(b'; filename="d.png"', b"").replace(b"image/png", b"text/plain")  # no file part
    elif action < 0.6:
        part = (f"--{boundary}\r\nContent-Type: multipart/mixed; boundary=yy\r\n\r\n--yy\r\n".encode()
                + part * 2 + b"--yy--\r\n")  # nested
    elif action < 0.7:
        part = part * rng.choice([50, 400])  # many parts
    elif action < 0.8:
        part = part.replace(b"d.png", b"../../etc/passwd\x00.png")
    return part, f"multipart/form-data; boundary={boundary}"


def _http_case(rng: random.Random, png: bytes) -> tuple[bytes, str, bool]:
    """A raw request: a valid one with one to three parts mutated. Returns (bytes, what was
    mutated, whether the request line is HTTP/0.9's two words)."""
    method, target, version = rng.choice([("GET", "/", "HTTP/1.1"), ("GET", "/api/info", "HTTP/1.1"),
                                          ("POST", "/api/predict", "HTTP/1.1"), ("POST", "/api/predict", "HTTP/1.0")])
    body, content_type = (png, "image/png") if method == "POST" else (b"", None)
    if method == "POST" and rng.random() < 0.4:
        body, content_type = _multipart(png, rng)
    headers = [("Host", "127.0.0.1"), ("Connection", "close")]
    length = str(len(body)) if method == "POST" else None
    mutated = []
    for _ in range(rng.randint(1, 3)):
        what = rng.choice(["method", "target", "version", "length", "length twice", "chunked", "header", "type",
                           "body", "short body", "long body", "oversized", "no length"])
        mutated.append(what)
        if what == "method":
            method = rng.choice(METHODS)
        elif what == "target":
            target = rng.choice(TARGETS)
        elif what == "version":
            version = rng.choice(VERSIONS)
        elif what == "length":
            length = rng.choice(LENGTHS)
        elif what == "length twice":
            headers.append(("Content-Length", str(rng.choice([0, 1, len(body) + 7]))))
        elif what == "chunked":
            headers.append(("Transfer-Encoding", rng.choice(["chunked", "gzip, chunked", "identity", "\x00"])))
        elif what == "header":
            headers.append(rng.choice([("NoColon", None), ("X-Null", "a\x00b"), ("X-Long", "x" * 70_000),
                                       ("X-Latin", "\xff\xfe"), (" X-Space", "1"), ("X-Fold", "a\r\n folded"),
                                       ("", "empty name")]))
            if rng.random() < 0.1:
                headers += [(f"X-{i}", "1") for i in range(150)]
        elif what == "type":
            content_type = rng.choice(CONTENT_TYPES)
        elif what == "body":
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
            length = str(len(body))
        elif what == "short body":  # fewer bytes than Content-Length says, then the client stops sending
            body = body[:rng.randrange(len(body) + 1)]
        elif what == "long body":
            body = body + b"\x00" * rng.randint(1, 5000)
        elif what == "oversized":
            body = b"\x89PNG" + b"\x00" * int(LIMIT_MB * 1024 * 1024 * rng.choice([1.1, 3]))
            length = str(len(body)) if rng.random() < 0.7 else "9" * 12
        else:
            length = None
    lines = [" ".join(part for part in (method, target, version) if part or rng.random() < 0.5)]
    lines += [f"Content-Type: {content_type}"] if content_type is not None else []
    lines += [f"Content-Length: {length}"] if length is not None else []
    lines += [name if value is None else f"{name}: {value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
    two_words = len(lines[0].split()) == 2  # as http.server splits it
    return head + body, "+".join(mutated), two_words


def _exchange(port: int, request: bytes, timeout: float = 20) -> bytes:
    """Send ``request``, stop sending (the server sees the end of the upload), read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(request)
            connection.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before reading it all
            pass
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


@pytest.fixture
def served(bases, monkeypatch):
    """``reslab serve`` of the calibrated run, started through the command line in a thread."""
    import reslab.inference.server as server_module

    servers, ready = [], threading.Event()
    real = server_module.make_server

    def keep(*args, **kwargs):
        servers.append(real(*args, **kwargs))
        ready.set()
        return servers[-1]

    monkeypatch.setattr(server_module, "make_server", keep)
    ended = {}
    thread = threading.Thread(target=lambda: ended.update(code=main([
        "serve", str(bases / "study" / RUNS[0]), "--port", "0", "--device", "cpu", "--max-upload-mb",
        str(LIMIT_MB)])), daemon=True)
    thread.start()
    assert ready.wait(60), "the server did not start"
    yield servers[0].server_address[1]
    servers[0].shutdown()
    thread.join(30)
    assert ended.get("code") == 0


ALIVE = b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _http_answer(port: int, request: bytes, two_words: bool) -> tuple[str | None, int | None]:
    """(Why the server's answer to ``request`` breaks the contract, or None; its status)."""
    answer = _exchange(port, request)
    if not answer:
        return "no answer (the connection was dropped)", None
    if b"root:x:0:0" in answer or SECRET.encode() in answer:
        return "a file outside the server's own was sent", None
    status_line = answer.split(b"\r\n", 1)[0]
    if not status_line.startswith(b"HTTP/"):
        if two_words:  # HTTP/0.9 (a request line of two words) is answered with the body alone
            return None, None
        return f"answered without a status line (as to HTTP/0.9): {answer[:200]!r}", None
    status = int(status_line.split(b" ")[1])
    method, request_line = request.split(b" ", 1)[0], request.split(b"\r\n", 1)[0]
    protocol = ((status == 501 and method not in (b"GET", b"HEAD", b"POST"))  # RFC 9110: an unknown method
                or (status == 505 and b"HTTP/1." not in request_line))  # a version it does not speak
    if not (200 <= status < 300 or 400 <= status < 500 or protocol):
        return f"answered {status_line.decode(errors='replace')}: {answer[-200:]!r}", status
    if not _exchange(port, ALIVE).startswith(b"HTTP/1.0 200"):
        return "the server is down after it", status
    return None, status


def test_mutated_http_requests_get_an_answer_and_the_server_stays_up(bases, served):
    png = (bases / "image.png").read_bytes()
    failures, refused = [], 0
    start = _memory_mb("VmRSS")
    PEAKS.clear()
    for case in range(HTTP_CASES):
        rng = random.Random(SEED + HTTP_OFFSET + case)
        request, what, two_words = _http_case(rng, png)
        status = _case(failures, f"case {case} ({what}): {request[:80]!r}",
                       partial(_http_answer, served, request, two_words))
        refused += status is not None and 400 <= status < 500
    valid = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/png\r\n"
             + f"Content-Length: {len(png)}\r\n\r\n".encode() + png)
    answer = _exchange(served, valid)
    assert answer.startswith(b"HTTP/1.0 200") and b'"predictions"' in answer, answer[:300]
    assert not failures, "\n".join(failures)
    assert refused > HTTP_CASES // 4
    assert max(PEAKS, default=start) - start < MEMORY_MB
