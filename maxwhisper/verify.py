"""Layer-by-layer verification of the MAX encoder against the float64 PyTorch reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maxwhisper.audio import log_mel
from maxwhisper.model import MaxWhisper
from maxwhisper.parity import Comparison, compare, compare_traces, first_failure
from maxwhisper.registry import SPECS, spec_of
from reference.capture import trace_encoder
from reference.modules import reference_encoder


@dataclass
class Verification:
    comparisons: list[Comparison]

    @property
    def first_failure(self) -> Comparison | None:
        return first_failure(self.comparisons)

    @property
    def passed(self) -> bool:
        return self.first_failure is None


def verify(model: MaxWhisper, audio: np.ndarray) -> Verification:
    """Trace the MAX encoder and the reference on the first 30 s of `audio` and compare every layer.

    The last row, `encoder`, is the production graph (no trace outputs), which users actually run.
    """
    mel = log_mel(audio, model.dims.n_mels)[None]
    reference = reference_encoder(model.dims, model.state_dict)
    expected = trace_encoder(reference, torch.from_numpy(mel).to(torch.float64))
    rows = compare_traces(model.encode_trace(mel), expected, lambda layer: spec_of(layer).tol())
    rows.append(compare("encoder", model.encode(mel), expected["encoder.ln_post"], SPECS["encoder"].tol()))
    return Verification(rows)
