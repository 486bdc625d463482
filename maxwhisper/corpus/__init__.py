"""`maxwhisper transcribe --ray`: corpus transcription on Ray Data (`pip install maxwhisper[ray]`):
audio read and decoded in parallel tasks, transcribed by an actor pool of MAX models, each proven by
the start-up check before it takes work. The model and the transcription core never import this package."""
