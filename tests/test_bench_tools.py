"""The benchmark report and the ratio regression gate (no timing here)."""

import json

import pytest

from maxwhisper.bench.gate import check
from maxwhisper.bench.plugin import max_last
from maxwhisper.bench.probes import compile_time, rss_probe
from maxwhisper.bench.report import memory_lines, ratio_rows
from maxwhisper.harness.registry import layer_flops
from maxwhisper.sizes import SIZES


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


def test_ratio_rows_report_share_of_the_peak_measured_in_the_same_run():
    rows = ratio_rows([dict(group="peak:mm", impl="max", median_s=1.0, gflops=250.0),
                       dict(group="peak:mm", impl="torch", median_s=1.0, gflops=300.0),
                       dict(group="enc", impl="max", median_s=0.2, gflops=150.0, cores_busy=1.8),
                       dict(group="enc", impl="torch", median_s=0.2, gflops=150.0, cores_busy=2.0)])
    enc = next(r for r in rows if r["group"] == "enc")
    assert enc["peak_gflops"] == 300.0
    assert "50% / 50% of peak 300" in enc["line"] and "cores busy 1.80 / 2.00" in enc["line"]


def test_flop_counts_add_up_and_skip_elementwise_layers():
    dims = SIZES["tiny"]
    assert layer_flops("gelu", dims) is None and layer_flops("layer_norm", dims) is None
    assert layer_flops("block", dims) == layer_flops("attention", dims) + layer_flops("mlp", dims)
    assert layer_flops("encoder", dims, 4) == 4 * (layer_flops("conv_stem", dims) + 4 * layer_flops("block", dims))
    assert layer_flops("encoder", dims) == pytest.approx(36.94e9, rel=1e-3)  # the figure in benchmarks/README.md


def test_memory_lines_show_growth_over_the_baseline():
    (line,) = memory_lines([dict(config="tiny.en:batch1", impl="max", baseline_mb=700.0, peak_mb=1000.0)])
    assert "1000 MB" in line and "+300 MB" in line


def test_rss_probe_refuses_an_unknown_configuration():
    with pytest.raises(ValueError, match="huge"):
        rss_probe("max", "huge", 1)


def test_compile_probe_refuses_an_unknown_graph():
    with pytest.raises(ValueError, match="decoder"):
        compile_time("decoder")


def test_bound_layer_refuses_missing_weights():
    from maxwhisper.harness.registry import SPECS
    from maxwhisper.harness.runners import bound_max

    with pytest.raises(ValueError, match=r"params lack .*0\.weight"):
        bound_max(SPECS["mlp"], SIZES["tiny"], {})


def test_max_last_moves_every_max_timing_after_the_others_keeping_each_order():
    items = ["peak-max", "peak-torch", "ln-max", "ln-torch", "enc-max-lowp", "enc-torch-lowp", "enc-ctranslate2",
             "compile", "enc-max"]
    impl = lambda i: i.split("-", 1)[1] if "-" in i else None
    assert max_last(items, impl) == ["peak-torch", "ln-torch", "enc-torch-lowp", "enc-ctranslate2", "compile",
                                     "peak-max", "ln-max", "enc-max-lowp", "enc-max"]


def test_decoder_step_work_is_what_torch_counts():
    """The true-size benchmark's GFLOP of one decoder step (the rate it reports) equals PyTorch's own
    count of openai-whisper's decoder stepping once over a cache of 32 tokens."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from whisper.model import disable_sdpa

    from maxwhisper.bench.sizes import work_gflop
    from maxwhisper.checkpoints import to_torch_model
    from maxwhisper.harness.inputs import random_weights

    dims = SIZES["tiny"]
    model = to_torch_model(dims, random_weights(np.random.default_rng(0), dims, prefix=""))
    xa = torch.zeros(2, dims.n_audio_ctx, dims.n_audio_state)
    kv, hooks = model.install_kv_cache_hooks()
    with torch.no_grad():
        model.decoder(torch.zeros(2, 31, dtype=torch.long), xa, kv_cache=kv)
        with FlopCounterMode(display=False) as counted, disable_sdpa():  # the counter skips CPU SDPA
            model.decoder(torch.zeros(2, 1, dtype=torch.long), xa, kv_cache=kv)
    for h in hooks:
        h.remove()
    assert counted.get_total_flops() / 1e9 == pytest.approx(work_gflop(dims, "step", 2), rel=1e-3)


def test_the_summary_renders_every_kind_of_row_the_benchmarks_record():
    """The report that ends a benchmark run knows each kind of row a benchmark records: a smoke run of
    the serve benchmark once crashed the end of CI's run with a KeyError here."""
    import re
    from pathlib import Path

    from maxwhisper.bench.report import SECTIONS, rows_by_kind, summary_sections

    recorded = set()
    for path in (Path(__file__).parents[1] / "benchmarks").glob("test_*.py"):
        for kind in re.findall(r'kind=f?"([^"]+)"', path.read_text()):
            recorded |= {kind.replace("{what}", w) for w in ("encoder", "step")} if "{what}" in kind else {kind}
    assert recorded and recorded <= set(SECTIONS), recorded - set(SECTIONS)
    rows = [dict(config="tiny.en:batch1", impl="max", baseline_mb=700.0, peak_mb=1000.0),
            dict(kind="compile", graph="encoder", cold_s=30.0, warm_s=2.0),
            dict(kind="pipeline", impl="torch", batch=1, files=107, audio_s=700.0, seconds=90.0, rtf=0.13, spent=""),
            dict(kind="decoder-step", impl="max", batch=1, median_ms=5.0, cache=32),
            dict(kind="true-size-encoder", size="base", what="encoder", impl="max", batch=1, median_ms=200.0, gflop=20.0),
            dict(kind="true-size-step", size="base", what="step", impl="max", batch=1, median_ms=5.0, gflop=0.1),
            dict(kind="serve-load", server="maxwhisper", dtype="float32", batch=8, clients=8, files=4, seconds=5.0,
                 requests_per_s=0.8, p50_s=1.0, p95_s=2.0)]
    sections = dict(summary_sections([], rows))
    assert len(sections) == 1 + len(SECTIONS) and all(sections[t] for t, _ in SECTIONS.values())
    assert "0.80 requests/s" in sections[SECTIONS["serve-load"][0]][0]
    assert sum(map(len, rows_by_kind(rows).values())) == len(rows)
    with pytest.raises(ValueError, match="'nonesuch'"):
        summary_sections([], [dict(kind="nonesuch")])
