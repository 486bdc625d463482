"""`maxwhisper verify`: the table, the JSON, the exit codes."""

import json
import subprocess
import sys

import pytest

from maxwhisper.cli import main


def test_verify_jfk_writes_table_and_json(speech_dir, tmp_path, capsys, tiny_en_model):
    """Two dtypes (comma-separated and repeated): one table and one JSON run each, one plot."""
    out, png = tmp_path / "v.json", tmp_path / "errors.png"
    assert main(["verify", str(speech_dir / "jfk.flac"), "--json", str(out), "--plot", str(png),
                 "--dtype", "float32,bfloat16", "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG" and f"error plot written to {png}" in printed
    assert "word-alignment heads: 8 (openai-whisper's table for tiny.en)" in printed
    assert "encoder.blocks.3.attn.key" in printed and printed.count("within tolerance") == 2
    assert "MAX: bfloat16 (real 16-bit MAX kernels" in printed and "emulated" in printed
    assert printed.count("\nyardstick: torch ") == 2 and "float32, matmul ieee, conv ieee" in printed
    runs = json.loads(out.read_text())["runs"]
    assert [r["dtype"] for r in runs] == ["float32", "bfloat16"]
    assert runs[0]["mode"] == "float32 (IEEE; cpu)" and "matmul ieee, conv ieee" in runs[0]["yardstick"]
    assert "sequential order" in runs[0]["order_yardstick"] and runs[1]["order_yardstick"] == ""
    assert printed.count("margin, k over the worst ratio") == 2 and "second yardstick: torch float32" in printed
    for report in runs:  # jfk.flac is one window at seek 0; the margins are the rule's headroom here
        assert [w["seek"] for w in report["windows"]] == [0] and report["worst_window"] == 0
        assert set(report["margins"]) == {"norm", "quantile", "max"}
        assert all(m["margin"] >= 1 for m in report["margins"].values())
    for report in runs:
        assert report["passed"] and report["first_failure"] is None
        assert "ask not what your country can do for you" in report["transcripts"]["max"]
        assert report["transcripts"]["wer_max"] == 0.0
    report = runs[0]
    names = [r["layer"] for r in report["layers"]]
    at = names.index("encoder")  # the encoder's rows, then the decoder's (cross K/V first, logits last)
    assert names[at - 1:at + 2] == ["encoder.ln_post", "encoder", "decoder.blocks.0.cross_attn.key"]
    assert names[-1] == "decoder.logits" and len(names) == 110
    assert all(r["max_abs"] < 0.02 for r in report["layers"])
    d = report["decoder"]  # teacher-forced on jfk.flac's reference text
    assert d["top1_equal"] == d["steps"] == 28 and d["top1_failures"] == []
    assert "top-1 token equal to the reference's at 28/28 steps" in printed
    bf16 = runs[1]  # 16-bit: the rule alone, on the same 110 rows; top-1 may differ only within a tie
    assert all(r["tolerance"] is None for r in bf16["layers"])
    assert [r["layer"] for r in bf16["layers"]] == names
    assert bf16["decoder"]["steps"] == 28 and bf16["decoder"]["top1_failures"] == []
    e2e = report["transcripts"]
    assert e2e["wer_max_vs_torch"] == 0.0
    assert "WER MAX vs PyTorch: 0.00%" in printed


# --thorough only: its 110 rows need tf32's decoder graphs, a cold compile CI leaves out (precision.PRECISIONS,
# tf32's families); CI builds them and counts their truncations (test_tf32.py).
@pytest.mark.thorough
def test_verify_tf32_layers_only(speech_dir, tmp_path, capsys):
    """tf32 on jfk.flac, every row within the rule against the TF32 yardstick; --no-transcripts
    writes the JSON with the layers and no transcripts; both headers say what ran."""
    out = tmp_path / "v.json"
    assert main(["verify", str(speech_dir / "jfk.flac"), "--dtype", "tf32", "--no-transcripts",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MAX: tf32 (every Linear and conv matmul on operands truncated to TF32" in printed
    assert "yardstick: torch " in printed and "operands truncated to TF32" in printed
    assert "all 110 layers within tolerance" in printed and "transcript" not in printed
    report = json.loads(out.read_text())
    assert report["passed"] and report["transcripts"] == {} and len(report["layers"]) == 110
    assert report["decoder"]["top1_failures"] == []


# q4_0's whole-model traced graphs cost CI ~100 s cold (docs/testing.md), as int8's below; its kernel's
# bit-exact product and per-layer records run in CI
@pytest.mark.thorough
@pytest.mark.precision("q4_0")
def test_verify_q4_0(speech_dir, tmp_path, capsys):
    """q4_0 on jfk.flac: every chained row within the rule against PyTorch float32 of the same quantized
    arithmetic, each quantized product also judged on MAX's own input (20 encoder and 25 decoder rows
    more), top-1 equal at every step, the same words as openai-whisper float32."""
    out = tmp_path / "v.json"
    assert main(["verify", str(speech_dir / "jfk.flac"), "--dtype", "q4_0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MAX: q4_0 (GGUF Q4_0 weights times int8 activations" in printed
    assert "Q4_0 weights times int8 activations (reference.quantized)" in printed
    report = json.loads(out.read_text())
    layers = [r["layer"] for r in report["layers"]]
    assert len(layers) == 110 + 20 + 25 and report["passed"]
    assert "encoder.blocks.1.mlp.0 (on MAX's input)" in layers and "decoder.logits (on MAX's input)" in layers
    assert report["decoder"]["top1_equal"] == 28 and report["decoder"]["top1_failures"] == []
    assert report["transcripts"]["wer_max_vs_torch"] == 0.0


def test_verify_fails_and_names_the_layer(speech_dir, capsys, monkeypatch, tiny_en_model):
    """A wrong activation gives exit 1 and names the first bad layer (the mutation tests inject
    real bugs into the graph; here the trace is doctored so that no extra graph is compiled)."""
    from maxwhisper.model import MaxWhisper

    traced = MaxWhisper.encode_trace

    def doctored(self, mel):
        trace = traced(self, mel)
        trace["encoder.blocks.1.mlp_ln"] = trace["encoder.blocks.1.mlp_ln"] + 1e-3
        return trace

    monkeypatch.setattr(MaxWhisper, "encode_trace", doctored)
    assert main(["verify", str(speech_dir / "jfk.flac"), "--no-transcripts"]) == 1
    assert "first layer over tolerance: encoder.blocks.1.mlp_ln" in capsys.readouterr().out


def test_verify_names_a_doctored_decoder_layer(speech_dir, capsys, monkeypatch, tiny_en_model):
    """The decoder rows judge what the MAX decoder computed: a doctored step activation fails there."""
    from maxwhisper.decoder import MaxDecoder

    traced = MaxDecoder.trace

    def doctored(self, *args, **kwargs):
        trace = traced(self, *args, **kwargs)
        trace["decoder.blocks.2.cross_attn"][:, 5] += 1e-3  # one step's output
        return trace

    monkeypatch.setattr(MaxDecoder, "trace", doctored)
    assert main(["verify", str(speech_dir / "jfk.flac"), "--no-transcripts"]) == 1
    assert "first layer over tolerance: decoder.blocks.2.cross_attn" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["verify", "/no/such/file.flac"], "no such file"),
    (["verify", "."], "directory"),
    (["verify", "--model", "no-such-model"], "no-such-model"),
    (["verify", "--dtype", "float32,fp8"], "dtype 'fp8'"),
    (["verify", "--device", "cuda:0"], "device 'cuda:0'"),
])
def test_verify_bad_input_is_one_line_exit_2(args, words):
    p = subprocess.run([sys.executable, "-m", "maxwhisper.cli", *args], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_verify_not_audio_is_exit_2(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    p = subprocess.run([sys.executable, "-m", "maxwhisper.cli", "verify", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "cannot decode" in p.stderr and "Traceback" not in p.stderr


def test_verify_without_speech_data_uses_espeak(monkeypatch, capsys, tmp_path, tiny_en_model):
    """On a machine without ../shared/speech the main job still runs, on synthesized speech."""
    import maxwhisper.harness.verify

    monkeypatch.setattr(maxwhisper.harness.verify, "speech_dir", lambda: None)
    out = tmp_path / "v.json"
    assert main(["verify", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["audio"].startswith("eSpeak NG") and report["passed"]
    assert report["transcripts"]["wer_max_vs_torch"] == 0.0 and "reference" not in report["transcripts"]
    assert "country" in report["transcripts"]["max"].lower()


@pytest.mark.parametrize("command", ["verify", "transcribe"])
def test_every_precision_is_in_the_dtype_help(command, capsys):
    """`--help` lists every precision the command accepts, from the one table (`precision.PRECISIONS`)."""
    from maxwhisper.precision import PRECISIONS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--dtype" in text and all(name in text.split("--dtype", 1)[1] for name in PRECISIONS), text


# int8's whole-model traced graphs are cold compiles CI cannot afford (the int8 tests took 7m52s from an empty
# cache, these two most of it: docs/testing.md); its one-layer graphs, mutants and records run in CI
@pytest.mark.thorough
@pytest.mark.precision("int8")
def test_verify_int8(speech_dir, tmp_path, capsys):
    """int8 on jfk.flac: chained rows judged up to the first product, then shown only (a code flipped on
    one side of its boundary is not arithmetic: `harness.quantized.unjudged_after_codes`); each of the 45
    products with a traced input judged on MAX's own input by the rule and bit for bit; top-1 equal at every
    step; the same words as openai-whisper float32."""
    out = tmp_path / "v.json"
    assert main(["verify", str(speech_dir / "jfk.flac"), "--dtype", "int8", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "summed exactly in int32 (the maxwhisper_int8_matmul Mojo kernel" in printed
    assert "judged layers within tolerance (94 more shown, not judged)" in printed
    report = json.loads(out.read_text())
    rows = {r["layer"]: r for r in report["layers"]}
    exact = [k for k in rows if k.endswith("(bit for bit, on MAX's input)")]
    assert len(exact) == 45 and all(rows[k]["max_abs"] == 0 for k in exact)
    assert rows["encoder.blocks.0.attn_ln"]["status"] == "ok" and report["passed"]
    assert report["decoder"]["top1_equal"] == 28 and report["transcripts"]["wer_max_vs_torch"] == 0.0


@pytest.mark.thorough
@pytest.mark.precision("int8")
def test_verify_int8_names_a_scale_one_ulp_off(speech_dir, monkeypatch):
    """One product's weight scales one float32 ulp large (`encoder.blocks.1.mlp.0`): its bit-for-bit row,
    and no other row, fails; the rule on MAX's input cannot see it (a 2^-23 relative change)."""
    import numpy as np

    from maxwhisper import int8
    from maxwhisper import model as M
    from maxwhisper.harness import verify

    real = M.with_quantized

    def bugged(weights, quantizer):
        out = real(weights, quantizer)
        key = "encoder.blocks.1.mlp.0.weight" + int8.SCALES
        if key in out:
            out[key] = np.nextafter(out[key], np.float32(np.inf))
        return out

    monkeypatch.setattr(M, "with_quantized", bugged)
    m = M.load_model(dtype="int8")
    _, audio = verify.default_audio(str(speech_dir / "jfk.flac"))
    result = verify.run(m, audio)
    bad = [c.layer for c in result.comparisons_all if not c.passed]
    assert bad == ["encoder.blocks.1.mlp.0 (bit for bit, on MAX's input)"], bad
