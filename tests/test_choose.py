"""The quantized-layer search's pieces (`maxwhisper.harness.choose`); the search itself is a tool run
(its result: docs/precision.md)."""

from __future__ import annotations

import fnmatch

from maxwhisper.harness.choose import groups, halves, speaker
from maxwhisper.quant import eligible
from maxwhisper.sizes import SIZES


def test_groups_cover_every_quantizable_weight_once(tiny_en):
    """Every Linear weight and the tied embedding of tiny.en falls in exactly one candidate group; the
    conv stem, LayerNorms and positions in none."""
    dims, state_dict = tiny_en
    table = groups(dims.n_audio_layer, dims.n_text_layer)
    assert list(table)[:2] == ["logits", "decoder.blocks.0"] and len(table) == 1 + 4 + 4 + 4
    for key, w in state_dict.items():
        hits = [g for g, pats in table.items() if any(fnmatch.fnmatchcase(key, p) for p in pats)]
        if eligible(key, w.shape):
            assert len(hits) == 1, (key, hits)
    assert not any(fnmatch.fnmatchcase("encoder.conv1.weight", p) for pats in table.values() for p in pats)
    assert SIZES["tiny.en"].n_text_layer == dims.n_text_layer


def test_halves_split_test_other_by_speaker(speech_dir):
    choose, report = halves()
    assert len(choose) == len(report) == 50
    assert not {speaker(r) for r in choose} & {speaker(r) for r in report}
    assert {r["subset"] for r in choose + report} == {"test-other"}
