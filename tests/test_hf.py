"""Hugging Face transformers checkpoints (`maxwhisper.checkpoints.hf`): transformers' own `save_pretrained` output
loads, and transformers is a second reference; tiny.en written as a transformers checkpoint transcribes
to openai-whisper's text. No download: models are built from a config and saved to a temporary folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import whisper

import transformers  # noqa: E402  in the test extra: missing, the module fails to import, never skips

from maxwhisper import load_model  # noqa: E402
from maxwhisper.harness import producers as P  # noqa: E402
from maxwhisper.harness.compare import compare  # noqa: E402
from maxwhisper.harness.registry import check_of  # noqa: E402
from maxwhisper.checkpoints.hf import save_hf, to_openai, to_transformers  # noqa: E402
from maxwhisper.sizes import SIZES  # noqa: E402
from maxwhisper.checkpoints import WeightsError, expected_shapes, load_weights  # noqa: E402

TINY_EN = SIZES["tiny.en"]
TINY_EN_HEADS = [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]


def _config(d) -> "transformers.WhisperConfig":
    return transformers.WhisperConfig(
        vocab_size=d.n_vocab, num_mel_bins=d.n_mels, encoder_layers=d.n_audio_layer, decoder_layers=d.n_text_layer,
        encoder_attention_heads=d.n_audio_head, decoder_attention_heads=d.n_text_head, d_model=d.n_audio_state,
        encoder_ffn_dim=4 * d.n_audio_state, decoder_ffn_dim=4 * d.n_text_state,
        max_source_positions=d.n_audio_ctx, max_target_positions=d.n_text_ctx)


@pytest.mark.parametrize("size", ["tiny.en", "large-v3-turbo", "distil-large-v3"])
def test_one_mapping_covers_transformers_names_both_ways(size):
    """Every parameter of transformers' model (built on the meta device: no memory) maps to exactly the
    openai-whisper state dict of the same size, and back; turbo's and distil's decoders their own depth."""
    with torch.device("meta"):
        theirs = transformers.WhisperForConditionalGeneration(_config(SIZES[size])).state_dict()
    mapped = {to_openai(k): tuple(v.shape) for k, v in theirs.items() if k != "proj_out.weight"}
    assert mapped == expected_shapes(SIZES[size])
    assert all(to_openai(to_transformers(k)) == k for k in mapped)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(_config(TINY_EN)).eval()
    path = tmp_path_factory.mktemp("hf") / "random-tiny-en"
    model.save_pretrained(path)
    return model, path


def test_transformers_is_a_second_reference(random_checkpoint, device, record_parity):
    """Random weights saved by transformers' own `save_pretrained`: MAX's encoder output and decoder
    logits, each against float64 (openai-whisper's modules on the loaded weights), within the rule in
    units of transformers' own float32 forward's error."""
    from maxwhisper.harness.golden import load_fixture

    hf, path = random_checkpoint
    model = load_model(path, device)
    assert model.dims == TINY_EN and model.alignment_heads is None  # no generation_config: the default
    mel = load_fixture().mel
    tokens = np.array([[50257, 50362, 440, 1029, 286, 428, 1499, 13]])
    with torch.no_grad():
        out = hf(input_features=torch.from_numpy(mel), decoder_input_ids=torch.from_numpy(tokens))
    features64 = P.torch_encoder(model.dims, model.state_dict, mel, production=False).arrays["encoder.ln_post"]
    features = model.encode(mel)
    logits = model.decoder.start(features).step(tokens)
    ref = P.torch_decoder(model.dims, model.state_dict, tokens, features64).arrays["decoder.logits"]
    checks = check_of(model.dims)
    rows = [compare("encoder (transformers' yardstick)", features, features64, checks("encoder.ln_post"),
                    out.encoder_last_hidden_state.numpy()),
            compare("decoder.logits (transformers' yardstick)", logits, ref, checks("decoder.logits"),
                    out.logits.numpy())]
    for row in rows:
        record_parity(row)
        assert row.passed, row.report()
    # the check can fail: logits off by 50x transformers' own rms error, spread as noise, do
    noise = np.random.default_rng(0).standard_normal(logits.shape).astype(np.float32)
    scale = 50 * rows[1].verdict.yardstick.norm * np.sqrt(np.mean(ref ** 2))
    doctored = compare("decoder.logits, doctored", logits + scale * noise, ref, checks("decoder.logits"),
                       out.logits.numpy())
    assert not doctored.passed, doctored.report()


def test_tiny_en_as_a_transformers_checkpoint_transcribes_to_openai_whisper(tmp_path, speech_dir, tiny_en, device):
    """tiny.en written as a transformers checkpoint (with its heads in generation_config.json): transformers
    loads every weight of it, maxwhisper reads back the same state dict and heads, and MAX transcribes
    jfk.flac to openai-whisper's own text."""
    from maxwhisper.audio import load_audio

    dims, sd = tiny_en
    path = save_hf(dims, sd, tmp_path / "tiny.en-hf", TINY_EN_HEADS)
    hf, info = transformers.WhisperForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info
    assert np.array_equal(hf.model.encoder.layers[1].fc1.weight.detach().numpy(), sd["encoder.blocks.1.mlp.0.weight"])
    back = load_weights(path)[1]
    assert all(np.array_equal(back[k], v) for k, v in sd.items())
    model = load_model(path, device)
    assert model.alignment_heads == TINY_EN_HEADS
    reference = whisper.model.Whisper(dims)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    audio = load_audio(speech_dir / "jfk.flac")
    want = whisper.transcribe(reference.eval(), audio, temperature=0.0, fp16=False)["text"]
    assert model.transcribe(audio)["text"] == want


def test_bad_checkpoints_are_refused_naming_the_problem(tmp_path, tiny_en):
    dims, sd = tiny_en
    path = save_hf(dims, sd, tmp_path / "ok")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(WeightsError, match="not a Whisper config"):
        load_weights(path)
    (path / "config.json").write_text(json.dumps({**config, "scale_embedding": True}))
    with pytest.raises(WeightsError, match="scale_embedding"):
        load_weights(path)
    from safetensors.numpy import load_file, save_file

    (path / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(path / "model.safetensors"))
    save_file({**tensors, "proj_out.weight": tensors["proj_out.weight"] * 2}, str(path / "model.safetensors"))
    with pytest.raises(WeightsError, match="proj_out.weight' differs from the token embedding"):
        load_weights(path)
    (path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="cannot read the weights"):
        load_weights(path)
