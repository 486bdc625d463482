"""`maxwhisper diff`: the encoder-change gate passes an unchanged encoder and names a regressed layer."""

import copy
import json

import numpy as np
import pytest

from maxwhisper.cli import main
from maxwhisper.harness import diff
from maxwhisper.model import MaxWhisper

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription


@pytest.fixture(scope="module")
def baseline():
    return diff.load(diff.BASELINE)


def test_diff_passes_the_unchanged_encoder(capsys, tiny_en_model):
    assert main(["diff"]) == 0
    out = capsys.readouterr().out
    assert "no layer's error grew more than 2x" in out and "golden" in out and "random-1" in out


def test_diff_fails_a_doctored_encoder_and_names_its_layer(capsys, monkeypatch, tiny_en_model):
    """A change that makes one layer ~50x less accurate (here the trace is doctored: no new compile)."""
    traced = MaxWhisper.encode_trace

    def doctored(self, mel):
        trace = traced(self, mel)
        x = trace["encoder.blocks.1.attn_ln"]
        trace["encoder.blocks.1.attn_ln"] = x + 1e-5 * np.random.default_rng(0).standard_normal(x.shape, np.float32)
        return trace

    monkeypatch.setattr(MaxWhisper, "encode_trace", doctored)
    assert main(["diff"]) == 1
    out = capsys.readouterr().out
    assert "first layer whose error grew more than 2x: golden encoder.blocks.1.attn_ln" in out


def test_compare_flags_growth_beyond_the_factor_and_missing_layers(baseline):
    now = copy.deepcopy(baseline["inputs"])
    layer = "encoder.blocks.2.mlp.0"
    now["golden"][layer]["max"]["norm"] *= 2.5
    del now["random-0"]["encoder.ln_post"]
    bad = [(r.input, r.layer) for r in diff.regressions(baseline, now) if r.regressed]
    assert bad == [("golden", layer), ("random-0", "encoder.ln_post")]
    assert not any(r.regressed for r in diff.regressions(baseline, now, factor=3.0) if r.layer == layer)


def test_diff_refuses_a_bad_baseline_with_exit_2(tmp_path, capsys):
    (tmp_path / "b.json").write_text(json.dumps({"format": 0}))
    assert main(["diff", str(tmp_path / "b.json")]) == 2
    assert "format" in capsys.readouterr().err
