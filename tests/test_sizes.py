"""The one table of sizes (`maxwhisper.sizes`): every name openai-whisper's `load_model` accepts, with
the decoder's depth its own (turbo: 32 encoder layers, 4 decoder layers)."""

import whisper

from maxwhisper.sizes import SIZES
from maxwhisper.checkpoints import expected_shapes


def test_every_openai_whisper_name_has_a_size():
    assert set(whisper.available_models()) <= set(SIZES)


def test_turbo_and_distil_have_their_own_decoder_depth():
    for name, (encoder, decoder) in {"turbo": (32, 4), "large-v3-turbo": (32, 4), "distil-large-v3": (32, 2),
                                     "distil-small.en": (12, 4), "large-v3": (32, 32)}.items():
        assert (SIZES[name].n_audio_layer, SIZES[name].n_text_layer) == (encoder, decoder), name


def test_mels_and_vocabulary_follow_the_generation():
    assert {n for n, d in SIZES.items() if d.n_mels == 128} == {
        "large-v3", "large", "large-v3-turbo", "turbo", "distil-large-v3", "distil-large-v3.5"}
    assert all(d.n_vocab == 51864 for n, d in SIZES.items() if n.endswith(".en"))
    assert all(d.n_vocab == 51866 for d in SIZES.values() if d.n_mels == 128)


def test_openai_alignment_heads_fit_each_size():
    """openai-whisper's heads table decodes to a mask of (decoder layers x heads) for every size it
    names: the decoder's depth in this table is the one its heads were written for."""
    import base64
    import gzip

    import numpy as np

    for name, dump in whisper._ALIGNMENT_HEADS.items():
        d = SIZES[name]
        assert np.frombuffer(gzip.decompress(base64.b85decode(dump)), bool).size == d.n_text_layer * d.n_text_head, name
        assert expected_shapes(d)["decoder.blocks.0.attn.query.weight"] == (d.n_text_state, d.n_text_state)
