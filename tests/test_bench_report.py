"""The benchmark report and the ratio regression gate (no timing here)."""

import json

import pytest

from maxwhisper.bench import check, ratio_rows


def _write(path, ratios):
    path.write_text(json.dumps({"ratios": [{"group": g, "ratio": r} for g, r in ratios.items()]}))
    return path


def test_ratio_rows_pairs_max_with_torch():
    rows = ratio_rows([dict(group="g", impl="max", median_s=0.2, gflops=None),
                       dict(group="g", impl="torch", median_s=0.25, gflops=None),
                       dict(group="g", impl="ctranslate2", median_s=0.3, gflops=None),
                       dict(group="alone", impl="max", median_s=1.0, gflops=None)])
    assert [r["group"] for r in rows] == ["g"]
    assert rows[0]["ratio"] == pytest.approx(0.8) and rows[0]["peers"] == {"ctranslate2": 0.3}


def test_check_flags_only_a_regression_over_the_slack(tmp_path):
    base = _write(tmp_path / "base.json", {"enc": 0.8})
    assert check(_write(tmp_path / "same.json", {"enc": 0.99}), base) == []  # +24%: within 25%
    bad = check(_write(tmp_path / "slow.json", {"enc": 1.01}), base)       # +26%
    assert len(bad) == 1 and "enc" in bad[0]


def test_check_refuses_a_result_missing_a_baseline_group(tmp_path):
    with pytest.raises(ValueError, match="enc"):
        check(_write(tmp_path / "r.json", {"other": 1.0}), _write(tmp_path / "b.json", {"enc": 0.8}))
