"""maxwhisper.audio: decoding, resampling, errors, eSpeak synthesis and Whisper's log-Mel front end."""

import numpy as np
import pytest
import soundfile as sf
import soxr

from maxwhisper.audio import SAMPLE_RATE, AudioError, load_audio, log_mel, synthesize
from maxwhisper.harness.speech import speech_dir

SPEECH = speech_dir()
# the speech_dir fixture skips without the shared speech data, and fails under CI=true
needs_speech = pytest.mark.usefixtures("speech_dir")


def sine(freq, rate, seconds, amp=0.3):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def peak_hz(audio, rate=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)]


# --- real speech, read in place from the shared folder ------------------------------------------------

@needs_speech
def test_jfk_stereo_44k_is_channel_mean_then_soxr():
    path = SPEECH / "jfk.flac"
    info = sf.info(path)
    assert (info.samplerate, info.channels) == (44100, 2), "jfk.flac is no longer 44.1 kHz stereo"
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - 11.0) < 0.01
    assert np.abs(audio).max() <= 1.0
    raw, rate = sf.read(path, dtype="float32", always_2d=True)
    expected = soxr.resample(raw.mean(axis=1, dtype=np.float32), rate, SAMPLE_RATE, quality="HQ")
    np.testing.assert_array_equal(audio, expected)


@needs_speech
def test_librispeech_16k_flac_is_not_resampled():
    path = next(p for p in sorted(SPEECH.glob("*librispeech*/*.flac")))
    info = sf.info(path)
    assert (info.samplerate, info.channels) == (16000, 1), f"{path} is not 16 kHz mono"
    expected, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(load_audio(path), expected)


# --- generated files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,rate,channels", [
    ("WAV", 8000, 1), ("WAV", 48000, 2), ("WAV", 22050, 6), ("FLAC", 44100, 2),
    ("OGG", 8000, 1), ("OGG", 48000, 2), ("MP3", 8000, 1), ("MP3", 48000, 2),
], ids=lambda v: str(v))
def test_generated_file_length_and_frequency(tmp_path, fmt, rate, channels):
    seconds = 2.0
    # Channel c carries the sine scaled by (c + 1): the mono mean has amplitude 0.1 * mean(1..n).
    mono = sine(1000, rate, seconds, amp=0.1)
    path = tmp_path / f"tone_{rate}.{fmt.lower()}"
    sf.write(path, np.stack([mono * (c + 1) for c in range(channels)], axis=1), rate, format=fmt)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - seconds * SAMPLE_RATE) <= 1, len(audio)
    assert abs(peak_hz(audio) - 1000) <= 1.0
    if fmt in ("WAV", "FLAC"):  # lossless: the amplitude shows the channels were averaged
        middle = audio[SAMPLE_RATE // 4: -SAMPLE_RATE // 4]
        expected = 0.1 * (channels + 1) / 2
        assert abs(np.abs(middle).max() - expected) < 0.01 * expected


def test_16k_float_wav_round_trips_bit_exact(tmp_path):
    signal = np.random.default_rng(0).uniform(-1, 1, 16000).astype(np.float32)
    sf.write(tmp_path / "x.wav", signal, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "x.wav"), signal)
    assert isinstance(load_audio(str(tmp_path / "x.wav")), np.ndarray)  # str paths too


# --- errors: AudioError, one line, naming the path ----------------------------------------------------

def _flac(tmp_path):
    noise = np.random.default_rng(0).standard_normal(48000 * 2) * 0.01
    path = tmp_path / "good.flac"
    sf.write(path, sine(440, 48000, 2) + noise.astype(np.float32), 48000)
    return path.read_bytes()


def _truncated_mid_frame(tmp_path):
    data = _flac(tmp_path)
    return data[: len(data) // 2]


def _flac_longer_header(tmp_path):
    """Every frame decodes cleanly, but STREAMINFO promises more samples: a file cut at a frame boundary."""
    data = bytearray(_flac(tmp_path))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    field = int.from_bytes(data[18:26], "big")  # rate(20) channels(3) bits(5) total_samples(36)
    data[18:26] = (field + 10_000).to_bytes(8, "big")  # total_samples is the low 36 bits
    return bytes(data)


def _float_wav(value):
    def make(tmp_path):
        signal = np.zeros(1600, np.float32)
        signal[100] = value
        sf.write(tmp_path / "tmp.wav", signal, SAMPLE_RATE, subtype="FLOAT")
        return (tmp_path / "tmp.wav").read_bytes()
    return make


def _empty_wav(tmp_path):
    sf.write(tmp_path / "tmp.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    return (tmp_path / "tmp.wav").read_bytes()


BAD_FILES = {
    "missing": (None, "no such file"),
    "directory": ("dir", "directory"),
    "not_audio": (lambda tmp_path: b"this is plain text, not a RIFF header\n" * 10, "cannot decode"),
    "zero_bytes": (lambda tmp_path: b"", "cannot decode"),
    "truncated_flac": (_truncated_mid_frame, "truncated or corrupt FLAC"),
    "truncated_flac_at_frame": (_flac_longer_header, "truncated or corrupt FLAC"),
    "empty_wav": (_empty_wav, "no samples"),
    "nan": (_float_wav(np.nan), "NaN"),
    "inf": (_float_wav(np.inf), "infinite"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_raises_audio_error_naming_path(tmp_path, case):
    make, needle = BAD_FILES[case]
    path = tmp_path / "sub" / f"{case}.{'flac' if 'flac' in case else 'wav'}"
    path.parent.mkdir()
    if make == "dir":
        path.mkdir()
    elif make is not None:
        path.write_bytes(make(tmp_path))
    with pytest.raises(AudioError) as err:
        load_audio(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert needle.lower() in message.lower()
    assert isinstance(err.value, ValueError)


def test_decoder_failure_chains_the_original(tmp_path):
    (tmp_path / "junk.ogg").write_bytes(b"OggS" + b"\0" * 100)
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "junk.ogg")
    assert isinstance(err.value.__cause__, sf.SoundFileError)


def test_programming_errors_are_not_turned_into_audio_errors():
    with pytest.raises(TypeError):
        load_audio(None)


# --- eSpeak NG ----------------------------------------------------------------------------------------

def test_synthesize_hello_world_is_speech_and_deterministic():
    first, second = synthesize("hello world"), synthesize("hello world")
    assert first.dtype == np.float32 and first.ndim == 1
    assert 0.5 <= len(first) / SAMPLE_RATE <= 3.0
    assert np.abs(first).max() > 0.1 and np.sqrt(np.mean(first ** 2)) > 0.01
    np.testing.assert_array_equal(first, second)
    assert len(synthesize("goodbye")) != len(first)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_synthesize_rejects_blank_text(text):
    with pytest.raises(ValueError, match="non-blank"):
        synthesize(text)


def test_synthesize_rejects_unknown_voice():
    with pytest.raises(ValueError, match="no voice"):
        synthesize("hello", voice="no-such-voice")


# --- log-Mel front end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def speech():
    return synthesize("And so my fellow Americans, ask not what your country can do for you.")


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", [None, 35.0])  # None: the synthesised clip (< 30 s, gets padded)
def test_log_mel_is_whispers_front_end(speech, n_mels, seconds):
    import torch
    import whisper

    audio = speech if seconds is None else np.resize(speech, int(seconds * SAMPLE_RATE))
    expected = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), n_mels).numpy()
    mel = log_mel(audio, n_mels=n_mels)
    assert mel.shape == (n_mels, 3000) and mel.dtype == np.float32
    np.testing.assert_array_equal(mel, expected)


def test_log_mel_casts_float64_to_float32(speech):
    np.testing.assert_array_equal(log_mel(speech.astype(np.float64)), log_mel(speech))


@pytest.mark.parametrize("bad,needle", [
    (np.zeros((2, 16000), np.float32), "1-D"),
    (np.zeros(16000, np.int16), "float"),
    (np.zeros(0, np.float32), "non-empty"),
    (np.array([0.0, np.nan], np.float32), "finite"),
    (np.array([0.0, -np.inf], np.float32), "finite"),
], ids=["2d", "int16", "empty", "nan", "inf"])
def test_log_mel_rejects_bad_input(bad, needle):
    with pytest.raises(ValueError, match=needle):
        log_mel(bad)
