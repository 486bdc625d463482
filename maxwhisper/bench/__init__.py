"""Benchmark tooling: timing order and result collection (plugin), ratio reports and charts,
the performance gate, and fresh-process probes (peak RSS, compile time). The timed suites are in
`benchmarks/`; `python -m maxwhisper.bench` is the command line."""
