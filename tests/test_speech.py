"""maxwhisper.harness.speech: finding the shared speech data and reading its tables."""

from maxwhisper.harness.speech import longform_groups, reference_text, speech_dir, transcripts


def _folder(tmp_path):
    (tmp_path / "transcripts.tsv").write_text("file\tsubset\ttext\na/x.flac\ttest-other\tHELLO THERE\n")
    (tmp_path / "longform_groups.tsv").write_text("group_id\tfiles_in_order\ttext\ng1\ta/x.flac\tHELLO THERE\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.flac").write_bytes(b"")
    return tmp_path


def test_speech_dir_prefers_env_var(tmp_path, monkeypatch):
    (tmp_path / "transcripts.tsv").write_text("file\ttext\n")
    monkeypatch.setenv("MAXWHISPER_SPEECH_DIR", str(tmp_path))
    assert speech_dir() == tmp_path.resolve()


def test_speech_dir_skips_env_var_without_transcripts(tmp_path, monkeypatch):
    monkeypatch.setenv("MAXWHISPER_SPEECH_DIR", str(tmp_path))
    found = speech_dir()
    assert found is None or (found != tmp_path.resolve() and (found / "transcripts.tsv").is_file())


def test_tables_and_reference_text(tmp_path, monkeypatch):
    where = _folder(tmp_path)
    monkeypatch.setenv("MAXWHISPER_SPEECH_DIR", str(where))
    assert transcripts() == [{"file": "a/x.flac", "subset": "test-other", "text": "HELLO THERE"}]
    assert longform_groups()["g1"]["files_in_order"] == "a/x.flac"
    assert reference_text(where / "a" / "x.flac") == "HELLO THERE"
    assert reference_text(where / "a" / "y.flac") is None   # not listed
    assert reference_text("/elsewhere/x.flac") is None      # outside the folder


def test_tables_are_empty_without_the_speech_data(monkeypatch):
    import maxwhisper.harness.speech as speech

    monkeypatch.setattr(speech, "speech_dir", lambda: None)
    assert speech.transcripts() == [] and speech.longform_groups() == {}
    assert speech.reference_text("jfk.flac") is None


def test_a_missing_input_skips_here_and_fails_under_ci(monkeypatch):
    import pytest

    from maxwhisper.harness.pytest_plugin import require

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="speech data absent"):
        require("speech data absent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and a required input is missing: speech data absent"):
        require("speech data absent")
