"""`maxwhisper serve`: OpenAI's audio API on MAX, batching across requests, checked before it serves
(`pip install maxwhisper[serve]`). The model and the transcription core never import this package."""
