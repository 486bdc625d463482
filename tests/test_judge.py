"""The derived rule (harness.judge) and its place in `compare`, on synthetic errors of known size."""

import numpy as np
import pytest

from maxwhisper.harness.compare import Check, Tolerance, compare
from maxwhisper.harness.judge import EPS, Rule, judge, scaled_error

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

RULE = Rule(k_norm=8, k_quantile=8, k_max=32)
rng = np.random.default_rng(0)
REF = rng.standard_normal((2, 50, 64))
NOISE = rng.standard_normal(REF.shape)


def _with_error(rel: float) -> np.ndarray:
    """The reference plus noise of RMS `rel` times the reference's RMS (~1)."""
    return REF + rel * NOISE


@pytest.mark.parametrize("times, passes", [(1, True), (2, True), (7, True), (9, False), (100, False)])
def test_rule_passes_a_multiple_of_the_yardstick_error_and_no_more(times, passes):
    v = judge(_with_error(times * 1e-6), _with_error(1e-6), REF, RULE)
    assert v.passed == passes, v
    assert v.ratios["norm"] == pytest.approx(times, rel=1e-6)


def test_one_bad_element_fails_by_the_max_figure_alone():
    actual = _with_error(1e-6).copy()
    actual[1, 7, 3] += 2e-4  # one element 200x the noise; the RMS moves by ~3x
    v = judge(actual, _with_error(1e-6), REF, RULE)
    assert not v.passed and v.failed == ("max",) and v.max_errors.worst == (1, 7, 3)


def test_floor_passes_tiny_errors_where_the_yardstick_is_exact():
    v = judge(REF + 0.5 * EPS["float32"] * NOISE, REF, REF, RULE)  # at most ~2 eps per element
    assert v.passed and v.ratios["norm"] == float("inf")
    assert not judge(REF + 100 * EPS["float32"] * NOISE, REF, REF, RULE).passed


def test_element_scale_judges_small_values_by_themselves_not_by_their_row():
    ref = np.array([[1000.0, 1e-3]])
    bad = np.array([[1000.0, 2e-3]])  # 100% off on the small element
    assert scaled_error(bad, ref, "row")[0, 1] < 2e-6       # the row's RMS hides it
    assert scaled_error(bad, ref, "element")[0, 1] == pytest.approx(1.0)
    assert scaled_error(bad, ref, "element", x=np.array([[1000.0, 1.0]]))[0, 1] == pytest.approx(1e-3 / 1.001)


def test_nan_fails_and_unknown_dtype_is_refused():
    actual = _with_error(1e-6).copy()
    actual[0, 0, 0] = np.nan
    assert not judge(actual, _with_error(1e-6), REF, RULE).passed
    with pytest.raises(ValueError, match="float8"):
        judge(REF, REF, REF, RULE, dtype="float8")


def test_compare_reports_ratios_and_needs_a_yardstick_for_the_rule():
    c = compare("layer", _with_error(20e-6), REF, Check(RULE), _with_error(1e-6))
    assert not c.passed and "norm ratio 20.0 > k" in c.failed_by
    assert "ratio    20.00" in c.report() and c.row()["ratios"]["norm"] == pytest.approx(20)
    with pytest.raises(ValueError, match="yardstick"):
        compare("layer", REF, REF, Check(RULE))


def test_compare_applies_the_absolute_guard_too():
    c = compare("layer", _with_error(1e-6) + 1.0, REF, Check(guard=Tolerance(1e-4, 0)))
    assert not c.passed and c.failed_by == ["absolute guard (atol=1e-04 rtol=0e+00)"]
    both = compare("layer", _with_error(1e-6), REF, Check(RULE, Tolerance(1e-4, 0)), _with_error(1e-6))
    assert both.passed and both.guard_passed


def test_plot_draws_every_layer_and_marks_the_first_failure(tmp_path):
    from maxwhisper.harness.plot import plot_errors

    rows = [compare(f"layer{i}", _with_error(e), REF, Check(RULE), _with_error(1e-6))
            for i, e in enumerate([1e-6, 2e-6, 50e-6, 1e-6])]
    assert [c.passed for c in rows] == [True, True, False, True]
    path = plot_errors({"float32": rows}, tmp_path / "errors.png", "synthetic")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
