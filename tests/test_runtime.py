"""The runtime paths, where a bug lives between graph calls (`runtime_checks`): each check passes on
the clean tree, and fails, naming the row, window or file, under each runtime mutant
(`mutants.RUNTIME_BUGS`, injected through `maxwhisper.seams`)."""

from __future__ import annotations

import numpy as np
import pytest

import runtime_checks as rc
from maxwhisper.audio import synthesize
from maxwhisper.harness import golden
from maxwhisper.transcribe import pipeline_model
from maxwhisper.checkpoints import to_torch_model
from mutants import RUNTIME_BUGS


@pytest.fixture(scope="module")
def inputs(tiny_en, tiny_en_model):
    """check name -> its arguments (built once: the PyTorch model, eSpeak NG speech, the mels)."""
    dims, state_dict = tiny_en
    mel = golden.load_fixture().mel
    mels = np.concatenate([mel, np.roll(mel, 700, axis=-1), mel[..., ::-1].copy()])
    return {
        "reorder_rows": (tiny_en_model,),
        "windows_own_cross_attention": (pipeline_model(tiny_en_model, "max", "max"), to_torch_model(dims, state_dict)),
        "batch_results_in_order": (pipeline_model(tiny_en_model, "max", "max"), [synthesize(s) for s in rc.SENTENCES]),
        "encoder_rows": (tiny_en_model, mels),
    }


@pytest.mark.parametrize("check", ["reorder_rows", "windows_own_cross_attention", "batch_results_in_order",
                                   "encoder_rows"])
def test_runtime_check_passes_clean(check, inputs):
    getattr(rc, check)(*inputs[check])


@pytest.mark.parametrize("bug", RUNTIME_BUGS)
def test_runtime_mutant_is_caught(bug, inputs, capsys):
    inject, check, where = RUNTIME_BUGS[bug]
    with inject(), pytest.raises(AssertionError, match=where) as caught:
        getattr(rc, check)(*inputs[check])
    with capsys.disabled():  # the margin it was caught by, for the report
        print(f"\nmutant {bug}: caught by {check}: {str(caught.value).splitlines()[0][:300]}")
