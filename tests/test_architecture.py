"""The tree's promises: the model package stands alone, the trace table is true, one record per layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from max.graph import Graph

from maxwhisper import layers, seams
from maxwhisper.harness.registry import SPECS, governing
from maxwhisper.model import emit_encoder, mel_type
from maxwhisper.runtime import device_ref, weight_lookup
from maxwhisper.sizes import SIZES
from maxwhisper.checkpoints import expected_shapes

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

ROOT = Path(__file__).resolve().parents[1]
MODEL_MODULES = ["maxwhisper", "maxwhisper.model", "maxwhisper.layers", "maxwhisper.runtime", "maxwhisper.checkpoints",
                 "maxwhisper.checkpoints.ct2", "maxwhisper.checkpoints.hf", "maxwhisper.audio", "maxwhisper.sizes", "maxwhisper.transcribe", "maxwhisper.cli",
                 "maxwhisper.precision", "maxwhisper.tf32", "maxwhisper.device", "maxwhisper.decoder"]
DIMS = SIZES["tiny.en"]


def test_model_package_imports_no_harness_and_no_benchmarks():
    code = (f"import importlib, sys\nfor m in {MODEL_MODULES!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('maxwhisper.harness', 'maxwhisper.bench'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]", f"the model package pulls in {p.stdout.strip()}"


def test_model_and_transcription_modules_import_in_one_direction():
    """The package's top-level modules (the model, transcription, batching, the CLI) form no import
    circle, lazy imports inside functions counted (model.py and transcribe.py had one); type-only
    imports (`if TYPE_CHECKING:`) are not imports."""
    import ast

    pkg = ROOT / "maxwhisper"
    graph = {}
    for f in pkg.glob("*.py"):
        tree = ast.parse(f.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for n in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = ([node.module] + [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     and node.module else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            deps |= {p[1] for p in (n.split(".") for n in names)
                     if p[0] == "maxwhisper" and len(p) > 1 and (pkg / f"{p[1]}.py").is_file() and p[1] != f.stem}
        graph[f.stem] = deps
    assert {"transcribe", "decoder"} <= graph["model"], graph  # the walk finds imports

    def visit(m, path):
        assert m not in path, f"import circle: {' -> '.join([*path, m])}"
        for d in graph[m]:
            visit(d, [*path, m])

    for m in graph:
        visit(m, [])


def test_the_model_and_the_cli_import_no_server_and_no_ray():
    """`maxwhisper serve`'s FastAPI and uvicorn, and `transcribe --ray`'s Ray, load only when they run
    (extras the core never needs)."""
    code = ("import sys, maxwhisper.model, maxwhisper.transcribe, maxwhisper.batch, maxwhisper.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette', 'ray')"
            " or m.startswith(('maxwhisper.serve.', 'maxwhisper.corpus.'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]", p.stdout


def test_checkpoints_modules_import_each_other_in_one_direction():
    """The checkpoints wing has no import circle (weights.py and ct2.py had one, hidden by an import
    inside a function): no module imports a sibling lazily, and the sibling imports form no cycle."""
    import ast

    pkg = ROOT / "maxwhisper" / "checkpoints"
    graph = {}
    for f in pkg.glob("*.py"):
        tree, deps = ast.parse(f.read_text()), set()
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for n in (n for n in names if n.startswith("maxwhisper.checkpoints")):
                assert node.col_offset == 0, f"{f.name}:{node.lineno} imports {n} inside a function"
                deps.add(n.removeprefix("maxwhisper.checkpoints").lstrip(".") or "__init__")
        graph[f.stem] = deps
    assert graph.pop("__init__") and all("__init__" not in d for d in graph.values()), graph
    done: set = set()

    def visit(m, path):
        assert m not in path, f"import circle: {' -> '.join([*path, m])}"
        if m not in done:
            for d in graph[m]:
                visit(d, [*path, m])
            done.add(m)

    for m in graph:
        visit(m, [])


def test_precision_table_and_device_parser_import_neither_max_nor_torch():
    """The reference side reads the same rows; it must not need MAX to (the package imports lazily)."""
    code = ("import sys, maxwhisper.device, maxwhisper.precision, maxwhisper.trace\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'max', 'torch', 'whisper'}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]", p.stdout


def _build_traced(record=None):
    """Build (not compile) the traced tiny.en encoder; `record` may wrap Scope.record."""
    ref = device_ref("cpu")
    shapes = {k: v for k, v in expected_shapes(DIMS).items() if k.startswith("encoder.")}
    trace: dict = {}
    with Graph("trace_check", input_types=[mel_type(DIMS, ref)]) as g:
        emit_encoder(g.inputs[0].tensor, weight_lookup({}, shapes, ref), DIMS, trace)
        g.output(*trace.values())
    return trace


def test_trace_table_names_the_function_that_records_each_id(monkeypatch):
    """`Traced.layer` is the maxwhisper.layers function whose `s.record` call produced the id."""
    callers = {}
    original = layers.Scope.record

    def spy(self, x, name=""):
        callers[(self.prefix + name).rstrip(".")] = sys._getframe(1).f_code.co_name
        return original(self, x, name)

    monkeypatch.setattr(layers.Scope, "record", spy)
    _build_traced()
    table = layers.encoder_trace(DIMS.n_audio_layer)
    assert [t.id for t in table] == list(callers)
    wrong = [(t.id, t.layer, callers[t.id]) for t in table if callers[t.id] != t.layer]
    assert not wrong, f"(id, table says, recorded by): {wrong}"


def test_a_layer_recording_an_unlisted_id_fails_at_build_time():
    extra = lambda layer_norm: lambda x, s: s.record(layer_norm(x, s), "extra")  # noqa: E731
    with seams.inject("layers.layer_norm", extra), pytest.raises(RuntimeError, match="extra"):
        _build_traced()


def test_every_trace_id_is_judged_by_exactly_the_record_of_its_layer():
    table = governing(DIMS)
    for t in layers.encoder_trace(DIMS.n_audio_layer):
        assert table[t.id] is SPECS[t.layer], t.id
    for name in SPECS:  # each record pairs an existing layer function with a reference
        assert callable(getattr(layers, name)), name


def test_no_module_over_350_lines():
    files = [p for d in ("maxwhisper", "reference", "tests", "benchmarks", "gpu") for p in (ROOT / d).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


def test_device_gpu_skips_with_its_reason_where_max_sees_no_accelerator():
    from max import driver

    if driver.accelerator_count() > 0:
        pytest.skip("this machine has an accelerator: `--device gpu` runs there instead of skipping")
    p = subprocess.run([sys.executable, "-m", "pytest", "tests/test_parity_layers.py", "-k", "gelu-normal and not axis",
                        "--device", "gpu", "-q", "-rs", "-p", "no:cacheprovider"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "1 skipped" in p.stdout and "--device gpu: device 'gpu': no MAX accelerator" in p.stdout, p.stdout[-3000:]


NO_MAX = ("import importlib.abc, sys\n"
          "class NoMax(importlib.abc.MetaPathFinder):\n"
          "    def find_spec(self, name, path, target=None):\n"
          "        if name == 'max' or name.startswith('max.'):\n"
          "            raise ImportError('MAX is not installed here: ' + name)\n"
          "sys.meta_path.insert(0, NoMax())\n")


def test_reference_runs_where_importing_max_raises_from_the_installed_package(tmp_path):
    """The oracle (top-level `reference`) needs torch and openai-whisper, never MAX; run from outside the
    tree, so `reference` is the installed distribution's (tox installs it; a dev venv maps it)."""
    code = NO_MAX + ("import numpy as np, reference, reference.capture as c\n"
                     "from maxwhisper.sizes import SIZES\n"
                     "from maxwhisper.checkpoints import expected_shapes\n"
                     "dims = SIZES['tiny.en']\n"
                     "rng = np.random.default_rng(0)\n"
                     "sd = {k: rng.standard_normal(s).astype(np.float32) * 0.02 for k, s in expected_shapes(dims).items()}\n"
                     "trace = c.reference_trace(dims, sd, rng.standard_normal((1, 80, 3000)).astype(np.float32))\n"
                     "print(reference.__file__, len(trace), sorted(m for m in sys.modules if m.split('.')[0] == 'max'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    where, count, loaded = p.stdout.split(maxsplit=2)
    assert int(count) == len(layers.encoder_trace(DIMS.n_audio_layer)) and loaded.strip() == "[]"
    assert Path(where).parent.name == "reference"


def test_a_seam_reaches_callers_that_imported_it_by_name_and_restores():
    """Why mutants go through `maxwhisper.seams`: a bug injected there reaches every caller, however the
    function was imported (a module attribute patch misses `from maxwhisper.layers import gelu`)."""
    from maxwhisper.layers import gelu

    calls = []
    with seams.inject("layers.gelu", lambda original: lambda x, s=None: calls.append(x) or original(x, s)):
        with pytest.raises(Exception):
            gelu("not a tensor")
    assert calls == ["not a tensor"]
    assert "layers.gelu" in seams.names() and gelu.seam == "layers.gelu"
    with pytest.raises(ValueError, match="no seam 'layers.gelu_typo'"):
        with seams.inject("layers.gelu_typo", lambda f: f):
            pass
    with pytest.raises(Exception):
        gelu("not a tensor")
    assert calls == ["not a tensor"]  # restored: the override saw no second call


def test_the_mutation_catalog_patches_nothing_but_seams():
    source = (Path(__file__).parent / "mutants.py").read_text()
    assert "setattr" not in source and ".__call__ =" not in source
