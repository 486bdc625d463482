"""int8 (`maxwhisper.int8`): the quantizer in numpy, the Mojo kernel's exact product on each CPU path, and
the one-Linear graph equal to `int8.linear_np` bit for bit; each mutant of the arithmetic turns it red."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from maxwhisper import int8, int8_ops, layers, seams  # noqa: F401  (int8_ops: its seams)

pytestmark = pytest.mark.precision("int8")  # a CPU kernel


def test_codes_round_half_to_even_within_127():
    """A row whose largest magnitude is 127 has scale 1, so x itself is the code before rounding: ties go
    to the even neighbour (2.5 -> 2, 3.5 -> 4, -0.5 -> 0), and the largest value is code 127 exactly."""
    x = np.array([[127, 2.5, 3.5, -0.5, -1.5, 0.49, -127]], np.float32)
    codes, scale = int8.quantize(x)
    assert scale.tolist() == [1.0]
    assert codes.tolist() == [[127, 2, 4, 0, -2, 0, -127]]


def test_a_zero_row_has_zero_codes_and_scale():
    codes, scale = int8.quantize(np.zeros((2, 8), np.float32))
    assert not codes.any() and not scale.any()


def test_round_trip_error_is_half_a_step():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 384)) * np.exp(rng.uniform(-4, 4, (64, 1)))).astype(np.float32)
    codes, scale = int8.quantize(w)
    err = np.abs(codes * scale[:, None].astype(np.float64) - w)
    assert (err <= scale[:, None] * (0.5 + 1e-6)).all()
    assert np.abs(codes).max() == 127


def test_quantize_refuses_non_finite_values():
    with pytest.raises(ValueError, match="NaN or infinite"):
        int8.quantize(np.array([[1.0, np.nan]], np.float32))


def test_pack_lays_out_16_columns_by_4_k_and_pads_to_64_rows():
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, (70, 8), dtype=np.int8)
    packed, sums = int8.pack(codes)
    assert packed.shape == (128 // 16, 2, 16, 4) and sums.shape == (128,)
    assert packed[1, 1, 3].tolist() == codes[16 + 3, 4:8].tolist()  # block 1, k quad 1, column 3
    assert not packed[70 // 16, :, 70 % 16:].any() and not packed[5:].any()
    np.testing.assert_array_equal(sums[:70], 128 * codes.astype(np.int32).sum(axis=1))
    with pytest.raises(ValueError, match="multiple of 4"):
        int8.pack(codes[:, :6])


def test_path_follows_the_flags_and_the_variable(monkeypatch):
    monkeypatch.delenv(int8.PATH_ENV, raising=False)
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw", "avx512_vnni"})
    assert int8.path() == "vnni"
    monkeypatch.setenv(int8.PATH_ENV, "avx2")
    assert int8.path() == "avx2"
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "fma"})  # the Zen 3 kind
    monkeypatch.delenv(int8.PATH_ENV)
    assert int8.path() == "avx2"
    monkeypatch.setenv(int8.PATH_ENV, "vnni")
    with pytest.raises(ValueError, match="lacks avx512f, avx512bw, avx512_vnni"):
        int8.path()
    monkeypatch.setenv(int8.PATH_ENV, "sse")
    with pytest.raises(ValueError, match="expected one of vnni, avx2"):
        int8.path()
    monkeypatch.setattr(int8, "cpu_flags", lambda: {"sse4_2"})
    monkeypatch.delenv(int8.PATH_ENV)
    with pytest.raises(ValueError, match="neither"):
        int8.path()


# --- the graph: one Linear, compiled per path (a one-layer graph: ~10-20 s cold each) ---

K, N = 384, 100  # N pads to 128: the kernel's padded columns are dropped


def _paths() -> list:
    have = int8.cpu_flags()
    return [pytest.param(p, marks=pytest.mark.skipif(not all(f in have for f in int8._NEEDS[p]),
                                                     reason=f"this CPU lacks the {p} path's instructions"))
            for p in int8.PATHS]


_GRAPHS: dict = {}


def _linear(path: str, tag: str = ""):
    """A compiled one-Linear int8 graph on `path` (params as inputs: new weights need no recompile)."""
    from maxwhisper.precision import Quantizer
    from maxwhisper.runtime import Compiled, device_ref, functional_graph

    if (path, tag) not in _GRAPHS:
        params = {"weight": (N, K), "bias": (N,), **int8.param_shapes("weight", (N, K))}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(int8.PATH_ENV, path)
            g, _ = functional_graph(f"int8_linear_{path}{tag}", lambda xs, s: layers.linear(xs["x"], s),
                                    {"x": ["batch", "t", K]}, params, device_ref("cpu"),
                                    quantizes=Quantizer("int8", ("*",)))
        _GRAPHS[path, tag] = Compiled(g, "cpu"), list(params)
    return _GRAPHS[path, tag]


def _run(compiled, x, w, b):
    c, names = compiled
    values = int8.with_codes({"weight": w, "bias": b}, lambda key: True)
    return c(x, *[values[n] for n in names])[0]


def _cases():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((N, K)) * np.exp(rng.uniform(-3, 3, (N, 1)))).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    x = (rng.standard_normal((2, 7, K)) * np.exp(rng.uniform(-3, 3, (2, 7, 1)))).astype(np.float32)
    x[0, 2] = 0  # a zero row: scale 0
    x[1, 3, :8] = [127, 0.5, 1.5, 2.5, -2.5, 63.5, -126.5, 0.25]  # ties, on a row whose scale is 1
    x[1, 3, 8:] = 0
    return x, w, b


@pytest.mark.parametrize("path", _paths())
def test_int8_linear_is_its_numpy_arithmetic_bit_for_bit(path):
    """Rows not a multiple of the kernel's 4 (14), columns not of its 64 (100), a zero row, ties: equal."""
    x, w, b = _cases()
    np.testing.assert_array_equal(_run(_linear(path), x, w, b), int8.linear_np(x, w, b))


@pytest.mark.parametrize("path", _paths())
def test_the_kernel_sums_exactly_at_the_extremes(path):
    """Every code +-127 (|a b| summed to 127^2 K): any int16 step in the sum, or a saturating one
    (`pmaddubsw`'s), would wrap or clip; and the VNNI path's +128 offset meets its largest sum here."""
    sign = np.where(np.arange(K) % 3 == 0, -1, 1).astype(np.float32)
    x = np.stack([np.full(K, 3.0, np.float32), 3 * sign])[None]
    w = np.stack([np.ones(K, np.float32) * (1 if i % 2 else -1) for i in range(N)]) * sign
    b = np.zeros(N, np.float32)
    y = _run(_linear(path), x, w, b)
    np.testing.assert_array_equal(y, int8.linear_np(x, w, b))
    assert abs(y).max() == pytest.approx(3 * K)  # codes 127: the exact sum 127^2 K, scaled back


def _mutant(name: str):
    """Bugs in the int8 arithmetic, one seam each."""
    from max.dtype import DType
    from max.graph import ops

    if name == "scale one ulp off":  # every weight scale 1 + 2^-23 larger
        return "int8_ops.scaled", lambda f: lambda acc, top, s: f(acc, top, s * ops.constant(1 + 2**-23, DType.float32, device=s.device))
    if name == "ties away from zero":  # round-half-away instead of half-to-even
        def rows(f):
            def g(r):
                q, top = f(r)
                zero = ops.constant(0, DType.float32, device=r.device)
                y = r * ops.where(top > zero, ops.constant(127, DType.float32, device=r.device) / top, zero)
                half = ops.constant(0.5, DType.float32, device=r.device)
                away = ops.where(y < zero, -ops.floor(-y + half), ops.floor(y + half))
                return ops.cast(away, DType.int8), top
            return g
        return "int8_ops.quantize_rows", rows
    if name == "int16 accumulation":  # the sum wrapped to 16 bits
        return "int8_ops.matmul", lambda f: lambda q, c, s: ops.cast(ops.cast(f(q, c, s), DType.int16), DType.int32)
    raise ValueError(name)


@pytest.mark.parametrize("bug", ["scale one ulp off", "ties away from zero", "int16 accumulation"])
def test_each_mutant_of_the_arithmetic_is_caught(bug):
    path = int8.path()
    seam, make = _mutant(bug)
    with seams.inject(seam, make):
        bad = _linear(path, "_" + bug.replace(" ", "_"))
    x, w, b = _cases()
    y, want = _run(bad, x, w, b), int8.linear_np(x, w, b)
    wrong = y != want
    assert wrong.any(), f"{bug}: the graph still equals the numpy arithmetic"
    if bug == "ties away from zero":  # only the row of ties differs
        assert wrong[1, 3].any() and not np.delete(wrong.reshape(14, N), 10, axis=0).any()


def test_the_model_reads_the_harness_choice():
    """`maxwhisper/int8_layers.json` (the harness's choice, docs/precision.md) is what the int8 row runs."""
    import json
    from pathlib import Path

    from maxwhisper.precision import form

    chosen = json.loads((Path(int8.__file__).parent / "int8_layers.json").read_text())
    assert form("int8").quantized == tuple(chosen["patterns"]) and chosen["patterns"]


def test_graphs_multiply_every_chosen_product_in_int8(tiny_en):
    """Built, not compiled: the encoder and decoder graphs call the int8 kernel once per product the
    choice selects (all: per block q, k, v, out, mlp.0, mlp.2; the decoder's cross q and out too; the logits)."""
    from max.graph import DeviceRef

    from maxwhisper import decoder, model
    from maxwhisper.precision import form
    from maxwhisper.quant import with_quantized

    dims, state_dict = tiny_en
    q = form("int8").quantizer
    shapes = {k: v.shape for k, v in with_quantized(state_dict, q).items()}
    enc = {k: s for k, s in shapes.items() if k.startswith("encoder.")}
    dec = {k: s for k, s in shapes.items() if k.startswith("decoder.")}
    count = lambda g: str(g).count('"maxwhisper_int8_matmul"')  # noqa: E731
    assert count(model.encoder_graph(dims, enc, DeviceRef.CPU(), quantizes=q)[0]) == 4 * 6
    assert count(decoder.step_graph(dims, dec, DeviceRef.CPU(), quantizes=q)[0]) == 4 * 8 + 1
    assert count(decoder.cross_graph(dims, dec, DeviceRef.CPU(), quantizes=q)[0]) == 4 * 2


@pytest.mark.parametrize("path", _paths()[:1])
def test_a_graph_with_the_kernel_is_kept_as_an_artifact_keyed_by_all_it_is_built_from(path, tmp_path, monkeypatch):
    """Its second load reads the stored MEF and still computes the numpy arithmetic bit for bit; another
    graph, other kernel bytes or another CPU is another key; a damaged file is compiled again, with a warning."""
    from max import engine
    from max.graph import Graph

    from maxwhisper import artifacts
    from maxwhisper.precision import Quantizer
    from maxwhisper.runtime import device_ref, functional_graph

    monkeypatch.setattr(artifacts, "folder", lambda: tmp_path)
    compiles = []
    real = engine.InferenceSession.compile
    monkeypatch.setattr(engine.InferenceSession, "compile", lambda self, m, **kw: compiles.append(m) or real(self, m, **kw))
    x, w, b = _cases()
    want = int8.linear_np(x, w, b)
    np.testing.assert_array_equal(_run(_linear(path, "_artifact"), x, w, b), want)
    (stored,) = tmp_path.glob("*.mef")
    assert isinstance(compiles[-1], Graph)  # compiled from the graph, then stored
    _GRAPHS.pop((path, "_artifact"))
    np.testing.assert_array_equal(_run(_linear(path, "_artifact"), x, w, b), want)
    assert compiles[-1] == stored  # the same graph built again: read from its file

    def key(name="int8_linear_key", n=N):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(int8.PATH_ENV, path)
            params = {"weight": (n, K), "bias": (n,), **int8.param_shapes("weight", (n, K))}
            g, _ = functional_graph(name, lambda xs, s: layers.linear(xs["x"], s), {"x": ["batch", "t", K]},
                                    params, device_ref("cpu"), quantizes=Quantizer("int8", ("*",)))
            return artifacts.key(g)

    assert key() == key() != key(n=N + 64)
    with monkeypatch.context() as mp:
        mp.setattr(artifacts, "_cpu", lambda: b"model name : AMD EPYC\nflags : avx2 fma")
        other_cpu = key()
    assert other_cpu != key()
    with monkeypatch.context() as mp:  # one byte of the kernel library changed
        read = Path.read_bytes
        mp.setattr(Path, "read_bytes", lambda p: read(p)[:-1] + b"?" if p.suffix == ".mojoc" else read(p))
        other_kernel = key()
    assert other_kernel != key()

    stored.write_bytes(b"not a MEF")
    _GRAPHS.pop((path, "_artifact"))
    with pytest.warns(UserWarning, match="unreadable MAX artifact"):
        np.testing.assert_array_equal(_run(_linear(path, "_artifact"), x, w, b), want)
    assert stored.stat().st_size > 1000  # replaced by a good one
