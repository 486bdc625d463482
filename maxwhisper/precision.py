"""The precisions: one row each, every fact about a dtype on every kind of device.

16-bit rows follow openai-whisper's own mixed precision (`transcribe(..., fp16=True)`), so the PyTorch
yardstick in the same dtype follows it by construction: matmuls in the dtype with float32
accumulation; LayerNorm, positions and the attention softmax in float32; GELU in the dtype; float32 in
and out. Where MAX 26.7's 16-bit kernel does not keep that policy the op is emulated (`Row.emulated`):
float32 compute on the 16-bit values, one rounding of the output.

On an NVIDIA GPU MAX computes every float32 matmul in TF32 (operands truncated to 10 mantissa bits;
modular/modular#5348, no opt-out below SM100). So float32 names IEEE-grade float32 on every device
(on a GPU each such product is split into three TF32 products, NVIDIA's 3xTF32) and `tf32` names
what MAX's plain float32 graph is on a GPU, emulated on the CPU by truncating the operands in the graph.
This module imports neither MAX nor torch: the reference side reads the same rows.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from maxwhisper.device import parse_device

# The products a graph can mark: every Linear (the logits' tied embedding included), the conv stem's
# im2col matmul, the attention core's q.k^T and p.v.
LINEAR, CONV, ATTENTION = "linear", "conv", "attention"

# Products each kind of device computes in TF32 whatever a float32 graph asks. NVIDIA: MAX's matmul
# kernels and its cuBLAS fallback for every Linear and conv matmul (read in MAX 26.7's kernels); the
# attention core's products are not known until the GPU probe (gpu/README.md) measures them.
TF32_PRODUCTS = {"cpu": (), "gpu": (LINEAR, CONV)}
UNKNOWN = {"gpu": (ATTENTION,)}

_16BIT_EMULATED = ("conv stem matmul", "attention core")


@dataclass(frozen=True)
class Row:
    name: str
    storage: str              # activations' dtype in MAX and in torch: float32 | bfloat16 | float16
    eps: float                # the rule's floor unit (judge.judge)
    guard: bool               # float32's absolute target applies on real speech (registry)
    products: dict            # device kind -> how TF32_PRODUCTS are computed: ieee | tf32 | 3xtf32 | 16bit
    yardstick: str            # PyTorch in `storage` with IEEE float32 products ("ieee"), or their operands
                              # truncated to TF32 first ("tf32 operands"): reference.yardstick
    emulated: tuple[str, ...] = ()   # ops in float32 on 16-bit values (MAX's 16-bit kernel errs 9-13x torch's)
    # test family (records: one-layer property and golden tests; quantized_records: a quantized row's own;
    # golden: the encoder's golden trace; golden_decoder: the decoder's; tiny_en: tiny.en on jfk.flac;
    # pipeline: transcripts) -> whether CI runs it (False: pytest --thorough only)
    families: dict = field(default_factory=dict)
    why: str = field(default="", compare=False)
    # Weights stored as GGUF Q4_0 blocks and multiplied by MAX's CPU `qmatmul` (activations quantized to
    # int8 per block of 32: `maxwhisper.quant`), for the Linear weights (and the logits' tied embedding)
    # whose state-dict keys match one of these fnmatch patterns; empty: no quantized product.
    quantized: tuple[str, ...] = ()


PRECISIONS = {r.name: r for r in [
    Row("float32", "float32", 2.0**-23, True, {"cpu": "ieee", "gpu": "3xtf32"}, "ieee",
        why="IEEE-grade float32 on every device: the CPU's matmul is IEEE; a GPU's is split into 3 TF32 products"),
    # eps is float32's: the yardstick truncates the same operands, so TF32's own error is in it, and
    # what the floor covers (LayerNorm, GELU, softmax) is float32 arithmetic.
    # CI: the graphs built (not compiled), the truncation against the PTX mask and float32's GPU form
    # (test_tf32.py); every numerics family with --thorough (a cold compile each, 127 s for the encoder's
    # trace, for a GPU's numerics emulated; the GPU run judges them for real: docs/testing.md).
    Row("tf32", "float32", 2.0**-23, False, {"cpu": "tf32", "gpu": "tf32"}, "tf32 operands",
        families={"records": False, "golden": False, "golden_decoder": False, "tiny_en": False},
        why="MAX's float32 graph on an NVIDIA GPU; on the CPU its operand truncation is emulated in the graph"),
    # CI: every encoder and decoder layer chained (golden traces), tiny.en on jfk.flac and test-other's WER;
    # the one-layer records and the long-form windows (101 s) with --thorough (the records' merged graph still
    # compiles in CI for test_precision's clean records: docs/testing.md).
    Row("bfloat16", "bfloat16", 2.0**-7, False, {"cpu": "16bit", "gpu": "16bit"}, "ieee", _16BIT_EMULATED,
        {**dict.fromkeys(("golden", "golden_decoder", "tiny_en", "pipeline"), True), "records": False, "longform": False},
        why="openai-whisper's fp16=True policy in bfloat16"),
    # float16 in CI only with --thorough: every (graph, dtype) is a cold compile in a fresh CI cache
    # (docs/precision.md has the measured costs); bfloat16 is the CPU's 16-bit type, float16 a GPU's.
    Row("float16", "float16", 2.0**-10, False, {"cpu": "16bit", "gpu": "16bit"}, "ieee", _16BIT_EMULATED,
        dict.fromkeys(("records", "golden", "golden_decoder", "tiny_en", "pipeline", "longform"), False),
        why="openai-whisper's fp16=True policy"),
    # CPU only: MAX 26.7's quantized matmul kernels are CPU kernels. Judged against float64 of the same
    # quantized arithmetic (reference.quantized), its yardstick PyTorch float32 of it; one-layer records:
    # `linear` and `logits` (registry.QUANTIZED_SPECS), whose quantized product reads the record's input.
    Row("q4_0", "float32", 2.0**-23, False, {"cpu": "q4_0"}, "q4_0 operands",
        families={"quantized_records": True},  # and test_cli's verify on jfk.flac, on MAX's inputs too
        why="every Linear and the logits as GGUF Q4_0 weights times int8 activations (MAX's qmatmul), float32 otherwise",
        quantized=("*",)),
    # CPU only: a Mojo kernel (kernels/int8) multiplies the int8 codes exactly in int32, AVX-512 VNNI or
    # AVX2 by the CPU's flags (`maxwhisper.int8.path`). Judged as q4_0 is: float64 of the same codes'
    # product is the reference, PyTorch float32 of it the yardstick, and each product again on MAX's input.
    # Which products: the harness's choice, `int8_layers.json` (its measurements beside it).
    # CI runs its one-layer graphs bit for bit (tests/test_int8.py); the rule's records and verify's traced
    # graphs are cold compiles left to --thorough (docs/testing.md: 7m52s cold for all int8 tests).
    Row("int8", "float32", 2.0**-23, False, {"cpu": "int8"}, "int8 operands",
        families={"quantized_records": False},
        why="the chosen Linears and the logits as int8 weights (per output channel) times int8 activations "
            "(per row), summed exactly in int32 (a Mojo kernel), float32 otherwise",
        quantized=tuple(json.loads((Path(__file__).parent / "int8_layers.json").read_text())["patterns"])),
    # No mix of quantized and float32 layers: the harness's search (`python -m maxwhisper.harness.choose`)
    # kept no group, every one changing 3.0-6.4% of float32's words against bfloat16's 1.78%
    # (benchmarks/q4_0_search.json, docs/precision.md).
]}


def row(name: str) -> Row:
    """The row of a precision name, or a ValueError naming it."""
    if name not in PRECISIONS:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


@dataclass(frozen=True)
class Form:
    """How one precision is built on one device: what the graph does to the marked products."""

    precision: str
    device: str               # the kind of device the graph runs on
    target: str               # the kind of device whose numerics it computes (emulation: gpu on the cpu)
    products: str             # ieee | tf32 | 3xtf32 | 16bit
    marked: tuple[str, ...]   # the products the graph truncates or splits itself
    quantized: tuple[str, ...] = ()  # `Row.quantized`

    @property
    def suffix(self) -> str:
        """What graph names carry beyond the storage dtype's (empty for float32 on the CPU, and 16-bit)."""
        if self.quantized:
            return f"_{self.precision}"
        return f"_{self.products}" if self.marked else ""

    def quantizes(self, key: str) -> bool:
        """Whether the product of weight `key` (a state-dict key) is a quantized one in this form."""
        return any(fnmatch.fnmatchcase(key, p) for p in self.quantized)

    @property
    def quantizer(self):
        """A `Quantizer`, or None for a form without quantized products (what graph builders take)."""
        return Quantizer(self.products, self.quantized) if self.quantized else None


@dataclass(frozen=True)
class Quantizer:
    """Which weights (state-dict keys matching `patterns`) a graph multiplies in `scheme` (q4_0 | int8)."""

    scheme: str
    patterns: tuple[str, ...]

    def __call__(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in self.patterns)


def form(name: str, device: str = "cpu", emulate: str | None = None) -> Form:
    """The form of precision `name` on `device`; `emulate="gpu"` builds a GPU's numerics on the CPU
    (every product the GPU computes in TF32 truncated or split in the graph itself)."""
    r, kind = row(name), parse_device(device).kind
    if emulate not in (None, "gpu", kind):
        raise ValueError(f"emulate {emulate!r}: expected 'gpu' (a GPU's numerics on this device) or nothing")
    target = emulate or kind
    if target not in r.products or kind not in r.products:
        raise ValueError(f"dtype {name!r} runs on the CPU only (its quantized product's kernels are CPU kernels), "
                         f"not on {device!r}" + (f" nor emulating {emulate!r}" if emulate else ""))
    products = r.products[target]
    # On a GPU the hardware truncates tf32's operands; everywhere else the graph must do it, and the
    # 3xTF32 split is always the graph's own.
    explicit = products == "3xtf32" or (products == "tf32" and kind != "gpu")
    return Form(name, kind, target, products, TF32_PRODUCTS["gpu"] if explicit else (), r.quantized)


def dtype_of(name: str):
    """The MAX dtype a precision's activations are stored in, or a ValueError naming it."""
    from max.dtype import DType

    return getattr(DType, row(name).storage)


# A quantized weight's GGUF blocks are a parameter of their own: its state-dict key plus this.
QUANT_KEY = ".q4_0"


# Parameters kept in float32 whatever the dtype (openai-whisper's LayerNorms and positions).
# The decoder's token embedding too: whisper adds it to the positions in float32 before rounding (its
# logits matmul casts it to the dtype per step, `layers.logits`).
_FLOAT32_PARAMS = ("_ln.weight", "_ln.bias", "ln_post.weight", "ln_post.bias", "decoder.ln.weight", "decoder.ln.bias",
                   "positional_embedding", "token_embedding.weight")


def quantized_dtype(key: str):
    """The MAX dtype of a quantized weight's own parameter (Q4_0 blocks, int8 codes, sums, scales), else None."""
    from max.dtype import DType

    from maxwhisper.int8 import CODES, SCALES, SUMS

    kinds = {QUANT_KEY: DType.uint8, CODES: DType.int8, SUMS: DType.int32, SCALES: DType.float32}
    return next((v for k, v in kinds.items() if key.endswith(k)), None)


def param_dtype(key: str, dtype):
    """The MAX dtype a parameter (by state-dict key) is stored and used in, in a graph of `dtype`."""
    from max.dtype import DType

    kind = quantized_dtype(key)
    if kind is not None:
        return kind
    return DType.float32 if key.endswith(_FLOAT32_PARAMS) else dtype


_PRODUCTS = {
    "ieee": "IEEE",
    "tf32": "every Linear and conv matmul on operands truncated to TF32 (10 mantissa bits), float32 otherwise",
    "3xtf32": "every Linear and conv matmul as three TF32 products (3xTF32: a_hi b_hi + a_hi b_lo + a_lo b_hi)",
    "q4_0": "GGUF Q4_0 weights times int8 activations in blocks of 32 (MAX's CPU qmatmul) for the Linears",
    "int8": "int8 weights per output channel times int8 activations per row, summed exactly in int32 "
            "(the maxwhisper_int8_matmul Mojo kernel, {path} path), for the Linears",
}


def mode(name: str, device: str = "cpu", emulate: str | None = None) -> str:
    """What a graph of precision `name` computes on `device`: every report prints it beside the dtype."""
    f, r = form(name, device, emulate), row(name)
    where = f"{f.device}" + (f", {f.target} numerics emulated" if f.target != f.device else "")
    if f.products == "16bit":
        text = (f"{name} (real 16-bit MAX kernels, LayerNorm and softmax in float32 by policy; emulated, float32 "
                f"compute on 16-bit inputs: {', '.join(r.emulated)}")
        if f.target == "gpu":
            text += ("; on a GPU their float32 products may run in TF32: exact on 16-bit operands, the attention "
                     "core's softmax weights truncated if its products do (not yet probed)")
        return text + f"; {where})"
    how = _PRODUCTS[f.products]
    if f.products == "int8":
        from maxwhisper.int8 import path

        how = how.format(path=path())
    if f.quantized:
        what = "all" if f.quantized == ("*",) else ", ".join(f.quantized)
        logits = " (the logits' tied embedding included)" if f.quantizes("decoder.token_embedding.weight") else ""
        how += f" matching {what}{logits}, every other product IEEE float32"
    if f.products == "tf32":
        how += " (truncated in the graph)" if f.marked else " (by the GPU's tensor cores)"
    elif f.products == "3xtf32":
        how += ", each operand's TF32 truncation done in the graph"
    if UNKNOWN.get(f.target):  # what the GPU probe has yet to say
        how += f"; TF32 or not on this device, not yet probed: {', '.join(UNKNOWN[f.target])}"
    return f"{name} ({how}; {where})"
