"""The performance gate (`tox -e perf`): MAX / PyTorch ratios against a stored baseline."""

from __future__ import annotations

import json
import os
from pathlib import Path


def check(result_path: str | os.PathLike, baseline_path: str | os.PathLike, slack: float = 0.25) -> list[str]:
    """Groups whose MAX / PyTorch ratio regressed more than `slack` over the stored baseline.

    Ratios, not seconds: both sides ran in the same run on the same machine, so machine speed cancels.
    """
    got = {r["group"]: r["ratio"] for r in json.loads(Path(result_path).read_text())["ratios"]}
    base = {r["group"]: r["ratio"] for r in json.loads(Path(baseline_path).read_text())["ratios"]}
    missing = [g for g in base if g not in got]
    if missing:
        raise ValueError(f"{result_path}: no result for baseline group(s) {missing}")
    return [f"{g}: ratio {got[g]:.3f} > {1 + slack:.2f} x baseline {base[g]:.3f}"
            for g in base if got[g] > (1 + slack) * base[g]]
