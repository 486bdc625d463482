"""The verification harness: maxwhisper's MAX layers judged against openai-whisper in float64.

Producers and judges are apart (as in Polygraphy): `reference` (openai-whisper's modules and a hook
trace) and `runners` produce arrays; `compare` judges them; `registry` holds one record per layer
that every test, the golden fixture (`golden`, `make_fixtures`) and `verify` read. The model package
never imports this one.
"""
