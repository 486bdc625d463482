"""PyTorch references for maxwhisper's MAX layers, built from openai-whisper's own modules (the harness's oracle)."""
