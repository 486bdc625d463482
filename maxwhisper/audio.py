"""Audio in, log-Mel out: file decoding, offline speech synthesis and Whisper's front end.

Decoding uses libsndfile (through soundfile) rather than ffmpeg, which is not available here;
resampling uses soxr. The log-Mel front end is openai-whisper's own code, so features match it bit for bit.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
# soxr "HQ" = 20-bit precision, linear phase: aliasing and ripple sit near -120 dB, far below the
# 80 dB dynamic range that Whisper's log-Mel keeps (it clamps at max - 8 in log10 units).
RESAMPLE_QUALITY = "HQ"


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


def load_audio(path) -> np.ndarray:
    """Decode wav/flac/mp3/ogg (any rate, any channel count) to float32 mono at 16 kHz."""
    name = os.fspath(path)  # messages show the path as the caller gave it
    path = Path(name)
    if not path.exists():
        raise AudioError(f"{name}: no such file")
    if path.is_dir():
        raise AudioError(f"{name}: is a directory, not an audio file")
    return _decode(path, name)


def decode_audio(data: bytes, name: str) -> np.ndarray:
    """`load_audio` of a file's bytes (an upload); messages name it `name`."""
    if not data:
        raise AudioError(f"{name}: is empty")
    return _decode(io.BytesIO(data), name)


def _decode(source, name: str) -> np.ndarray:
    fmt = None
    try:
        with sf.SoundFile(source) as f:
            fmt, rate = f.format, f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except sf.SoundFileError as e:
        # A FLAC cut short fails here either way: mid-frame the decoder loses sync; at a frame boundary
        # soundfile's seek to the length that STREAMINFO declares fails ("psf_fseek() failed").
        problem = "truncated or corrupt FLAC" if fmt == "FLAC" else "cannot decode audio"
        why = str(e).split(": ", 1)[-1] if str(e).startswith("Error opening <") else e  # not a file object's repr
        raise AudioError(f"{name}: {problem} ({why})") from e
    if data.size == 0:  # libsndfile also reports 0 frames for an Ogg stream cut before its last page
        raise AudioError(f"{name}: contains no samples (empty or truncated)")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    # Plain channel average, as ffmpeg `-ac 1` does for stereo (openai-whisper's load_audio path).
    audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    if audio.size == 0:
        raise AudioError(f"{name}: too short to hold one sample at {SAMPLE_RATE} Hz")
    return np.ascontiguousarray(audio, dtype=np.float32)


# --- eSpeak NG (espeakng-loader ships libespeak-ng and its data) -----------------------------------
# eSpeak keeps synthesis state in C statics that neither espeak_Terminate nor any API call resets (the
# pitch-flutter index, the AGC gain, the glottal cycle count), so the same text synthesised twice in one
# process differs by a few samples. Each call therefore runs in a fresh interpreter, which also keeps
# espeak's global state out of ours (no lock needed). The child needs only ctypes: -I -S skip site.
_ESPEAK_CHILD = r"""
import ctypes, sys
lib_path, data_path, voice = sys.argv[1:4]
text = sys.stdin.buffer.read() + b"\0"
lib = ctypes.CDLL(lib_path)
chunks = []
@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
def on_samples(wav, n, events):
    if wav and n > 0:
        chunks.append(ctypes.string_at(wav, 2 * n))
    return 0  # keep synthesising
# AUDIO_OUTPUT_SYNCHRONOUS (2): espeak_Synth returns once every sample went through the callback;
# espeakINITIALIZE_DONT_EXIT (0x8000): report missing data instead of calling exit().
rate = lib.espeak_Initialize(2, 0, data_path.encode(), 0x8000)
if rate <= 0:
    sys.exit(f"espeak_Initialize failed ({rate}) with data at {data_path}")
lib.espeak_SetSynthCallback(on_samples)
if lib.espeak_SetVoiceByName(voice.encode()) != 0:
    sys.stderr.write(f"eSpeak NG has no voice {voice!r}")
    sys.exit(3)
# Breath noise draws on espeak's own generator and on libc rand(): seed both.
lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
ctypes.CDLL(None).srand(1)
err = lib.espeak_Synth(text, len(text), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
if err != 0:
    sys.exit(f"espeak_Synth failed with error {err}")
sys.stdout.buffer.write(rate.to_bytes(4, "little") + b"".join(chunks))
"""


def synthesize(text: str, voice: str = "en-us") -> np.ndarray:
    """Speak `text` with eSpeak NG, offline and deterministic; float32 mono at 16 kHz."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"synthesize needs non-blank text, got {text!r}")
    import espeakng_loader

    args = [espeakng_loader.get_library_path(), espeakng_loader.get_data_path(), voice]
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _ESPEAK_CHILD, *args],
                          input=text.encode("utf-8"), capture_output=True, check=False)
    message = proc.stderr.decode(errors="replace").strip()
    if proc.returncode == 3:
        raise ValueError(message)
    if proc.returncode != 0:
        raise RuntimeError(f"eSpeak NG failed for {text!r} (exit {proc.returncode}): {message}")
    rate = int.from_bytes(proc.stdout[:4], "little")
    pcm = np.frombuffer(proc.stdout[4:], dtype=np.int16)  # 16-bit samples at espeak's rate (22050)
    if pcm.size == 0:
        raise ValueError(f"eSpeak NG produced no audio for {text!r}")
    audio = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    return audio.astype(np.float32, copy=False)


def log_mel(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Log-Mel of the first 30 s window: whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), n_mels).

    Float64 (or float16) input is cast to float32 first, as whisper's own load_audio would hand it over.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"log_mel needs 1-D audio, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"log_mel needs float audio, got dtype {audio.dtype}")
    if audio.size == 0:
        raise ValueError("log_mel needs non-empty audio, got 0 samples")
    if not np.isfinite(audio).all():
        raise ValueError("log_mel needs finite audio, got NaN or inf samples")
    import torch  # whisper (and torch) import slowly; only the front end needs them
    import whisper

    # Slice before copying so long inputs cost nothing; pad_or_trim then sees what it would have kept.
    window = torch.from_numpy(np.array(audio[: whisper.audio.N_SAMPLES], dtype=np.float32))
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(window), n_mels)
    return mel.numpy().astype(np.float32, copy=False)
