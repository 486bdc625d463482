"""Checkpoints fetched by name, without the internet: openai-whisper's names from a loopback HTTP server
standing in for its URL table (sha256 checked, nothing half-written kept), Hub ids from a Hugging Face
cache laid out on disk (`HF_HUB_OFFLINE=1`), and the one-line errors offline."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from maxwhisper.checkpoints import WeightsError, download, load_weights, weights_hash
from maxwhisper.checkpoints.hf import save_hf
from weights_helpers import TINY, random_state_dict

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """Serves `files` {path: bytes} on 127.0.0.1; `cut` paths send half their bytes under the full
    Content-Length; `headers` are added to every 404; `hits` counts requests."""

    def __init__(self):
        self.files, self.cut, self.headers, self.hits = {}, set(), {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    for k, v in server.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.cut else body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def pt_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    sd = random_state_dict(TINY, seed=seed)
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": {k: torch.from_numpy(a) for k, a in sd.items()}}, buf)
    return buf.getvalue()


def serve_pt(server, monkeypatch, tmp_path, name="base", body=None, sha=None) -> tuple[Path, bytes]:
    """`name`'s URL on `server`, its sha256 `sha` (default: the body's own), the cache under tmp_path."""
    body = pt_bytes(0) if body is None else body
    sha = sha or hashlib.sha256(body).hexdigest()
    path = f"/{sha}/{name}.pt"
    server.files[path] = body
    monkeypatch.setattr(download, "urls", lambda: {name: server.url + path})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "whisper", body


def test_a_name_downloads_into_the_whisper_cache_once(server, monkeypatch, tmp_path, capsys):
    cache, body = serve_pt(server, monkeypatch, tmp_path)
    dims, sd = load_weights("base")
    assert dims == TINY and weights_hash(sd) == weights_hash(random_state_dict(TINY, seed=0))
    assert sorted(p.name for p in cache.iterdir()) == ["base.pt"], "only the checked file is left"
    assert (cache / "base.pt").read_bytes() == body
    assert "base" in capsys.readouterr().err  # the progress bar, on stderr
    server.close()  # the second load reads the cache: no request, nothing listening
    assert weights_hash(load_weights("base")[1]) == weights_hash(sd) and len(server.hits) == 1


def test_a_corrupt_download_is_an_error_and_nothing_is_kept(server, monkeypatch, tmp_path):
    cache, _ = serve_pt(server, monkeypatch, tmp_path, sha="ab" * 32)  # the table's sha256 is not the body's
    with pytest.raises(WeightsError, match="sha256") as info:
        load_weights("base")
    assert "\n" not in str(info.value) and "nothing was kept" in str(info.value)
    assert list(cache.iterdir()) == [], "no file, no .part"


def test_a_download_cut_short_leaves_nothing(server, monkeypatch, tmp_path):
    cache, _ = serve_pt(server, monkeypatch, tmp_path)
    server.cut.update(server.files)
    with pytest.raises(WeightsError, match="base") as info:
        load_weights("base")
    assert "after" in str(info.value) and "nothing was kept" in str(info.value), info.value
    assert list(cache.iterdir()) == []


def test_a_server_that_never_answers_times_out(monkeypatch, tmp_path):
    """A connection that opens and then hangs (a captive portal, a dead proxy) is an error in seconds."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # the kernel completes the handshake; nobody ever answers
    port = listener.getsockname()[1]
    monkeypatch.setattr(download, "urls", lambda: {"base": f"http://127.0.0.1:{port}/{'0' * 64}/base.pt"})
    monkeypatch.setattr(download, "TIMEOUT_S", 1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    errors = []

    def load():
        try:
            load_weights("base")
        except WeightsError as e:
            errors.append(str(e))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    listener.close()
    assert not worker.is_alive() and errors and "'base'" in errors[0], errors


def test_a_cached_file_whose_sha256_differs_is_downloaded_again(server, monkeypatch, tmp_path, capsys):
    cache, body = serve_pt(server, monkeypatch, tmp_path)
    cache.mkdir(parents=True)
    (cache / "base.pt").write_bytes(pt_bytes(1))  # another model under the same name
    assert weights_hash(load_weights("base")[1]) == weights_hash(random_state_dict(TINY, seed=0))
    assert (cache / "base.pt").read_bytes() == body and "downloading it again" in capsys.readouterr().err


def test_offline_with_nothing_cached_is_one_line_exit_2_within_seconds(monkeypatch, tmp_path, capsys):
    """Port 9 on loopback refuses at once, as an offline machine's DNS does: verify and transcribe say
    which model and what to do, before loading any audio or compiling anything."""
    from maxwhisper.cli import main

    monkeypatch.setattr(download, "urls", lambda: {"small": f"http://127.0.0.1:9/{'0' * 64}/small.pt"})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for argv in (["verify", "--model", "small", "--no-transcripts"], ["transcribe", "--model", "small", "x.flac"]):
        start = time.perf_counter()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert time.perf_counter() - start < 10
        assert err.count("\n") == 0 and "'small'" in err and "connect" in err, err
    assert not (tmp_path / "whisper").exists() or list((tmp_path / "whisper").iterdir()) == []


# ------------------------------------------------------------------ the Hugging Face Hub
HUB_PROBE = """
import json, sys
from maxwhisper.checkpoints import load_weights, alignment_heads, weights_hash
out = {}
for name in sys.argv[1:]:
    try:
        dims, sd = load_weights(name)
        out[name] = {"hash": weights_hash(sd), "heads": alignment_heads(name, dims)}
    except ValueError as e:
        out[name] = {"error": str(e)}
print(json.dumps(out))
"""


def hub_probe(env: dict, *names: str) -> dict:
    """load_weights in a fresh process (huggingface_hub reads its environment once, at import)."""
    p = subprocess.run([sys.executable, "-c", HUB_PROBE, *names], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **env}, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def lay_out_hub_cache(cache: Path, repo: str, heads) -> str:
    """A snapshot as huggingface_hub stores one: models--owner--name/{refs/main, snapshots/<sha>/...}."""
    sd = random_state_dict(TINY, seed=2)
    commit = "c0ffee" * 6 + "1234"
    folder = cache / f"models--{repo.replace('/', '--')}"
    save_hf(TINY, sd, folder / "snapshots" / commit, heads=heads)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return weights_hash(sd)


def test_a_hub_id_and_a_distil_name_load_from_a_filled_cache_offline(tmp_path):
    want = lay_out_hub_cache(tmp_path, "someone/whisper-fine-tune", [[1, 0], [1, 1]])
    lay_out_hub_cache(tmp_path, "distil-whisper/distil-large-v3", None)
    got = hub_probe({"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"},
                    "someone/whisper-fine-tune", "distil-large-v3", "someone/not-cached")
    assert got["someone/whisper-fine-tune"]["hash"] == want
    assert got["someone/whisper-fine-tune"]["heads"] == [[[1, 0], [1, 1]], "the checkpoint's generation_config.json"]
    assert got["distil-large-v3"]["hash"] == want  # the name stands for distil-whisper/distil-large-v3
    err = got["someone/not-cached"]["error"]
    assert "someone/not-cached" in err and "HF_HUB_OFFLINE" in err and "\n" not in err, err


def test_a_hub_id_that_does_not_exist_is_named(server, tmp_path):
    """The Hub answers an unknown repo 404 with X-Error-Code RepoNotFound; so does this loopback one."""
    server.headers["X-Error-Code"] = "RepoNotFound"
    got = hub_probe({"HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0",
                     "HF_HUB_DISABLE_TELEMETRY": "1"},
                    "nobody/no-such-whisper")
    err = got["nobody/no-such-whisper"]["error"]
    assert "nobody/no-such-whisper" in err and "no such model on the Hugging Face Hub" in err, err
    assert server.hits, "the Hub was asked"


def test_transcribe_model_dir_is_the_download_root(server, monkeypatch, tmp_path):
    """`transcribe --model_dir DIR` keeps and downloads openai-whisper's `.pt` in DIR, as
    `whisper.load_model(name, download_root=DIR)` does."""
    from maxwhisper.transcribe_cli import model_path

    _, body = serve_pt(server, monkeypatch, tmp_path / "xdg")
    path = model_path("base", str(tmp_path / "mine"))
    assert path == str(tmp_path / "mine" / "base.pt") and Path(path).read_bytes() == body
    assert not (tmp_path / "xdg" / "whisper").exists()
