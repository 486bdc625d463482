"""Checkpoints that are not here yet: openai-whisper's names fetched into `~/.cache/whisper` from its own
URL table, as `whisper.load_model` fetches them (sha256 checked, a progress bar), and Hugging Face Hub
ids through `huggingface_hub`'s cache (so `HF_HUB_OFFLINE=1` and a filled cache work offline).

A download goes to a temporary file beside its target and is renamed only once its sha256 matches, so
an interrupted or corrupt download never leaves a file that looks valid.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from maxwhisper.checkpoints.state import WeightsError, one_line

TIMEOUT_S = 10  # a connection that cannot open fails within seconds, not at the OS's minutes
_CHUNK = 1 << 20


def urls() -> dict[str, str]:
    """openai-whisper's name -> URL table (its sha256 is the URL's second-to-last part)."""
    import whisper

    return dict(whisper._MODELS)


def cache_dir() -> Path:
    """Where `whisper.load_model` keeps its downloads (`download_root`'s default)."""
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def openai_checkpoint(name: str, root: Path | None = None, table: dict[str, str] | None = None) -> Path:
    """The `.pt` of openai-whisper's model `name` in `root` (default `cache_dir()`), downloaded when it
    is absent or its sha256 is not the URL's."""
    url = (table or urls())[name]
    want = url.split("/")[-2]
    root = cache_dir() if root is None else Path(root)
    target = root / os.path.basename(url)
    if target.exists() and not target.is_file():
        raise WeightsError(f"{target}: exists and is not a regular file")
    if target.is_file():
        if sha256(target) == want:
            return target
        print(f"maxwhisper: {target}: sha256 does not match {url}; downloading it again", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=root)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _fetch(url, out, name, root)
        if got != want:
            raise WeightsError(f"{url}: downloaded file's sha256 {got[:12]}... is not {want[:12]}... "
                               f"(a corrupt download or a changed file); nothing was kept in {root}")
        os.replace(part, target)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return target


def _fetch(url: str, out, name: str, root: Path) -> str:
    """Stream `url` into `out` with a progress bar on stderr; its sha256."""
    from tqdm import tqdm

    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as source:
            size = int(source.info().get("Content-Length") or 0) or None
            with tqdm(total=size, ncols=80, unit="iB", unit_scale=True, unit_divisor=1024,
                      desc=name, file=sys.stderr) as bar:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            if size is not None and bar.n != size:
                raise WeightsError(f"{url}: connection closed after {bar.n} of {size} bytes; nothing was kept")
    except (urllib.error.URLError, OSError) as e:  # offline, refused, timed out, cut short
        reason = getattr(e, "reason", e)
        raise WeightsError(f"model '{name}' is not in {root} and cannot be downloaded from {url} "
                           f"({one_line(reason) if isinstance(reason, BaseException) else reason}): connect "
                           f"to the internet, or pass the path of a local checkpoint") from None
    return h.hexdigest()


# Files of a Whisper repo on the Hub that loading reads: transformers' (config, safetensors, possibly
# sharded) or CTranslate2's (model.bin); pytorch_model.bin only where there is no safetensors file.
HUB_FILES = ["config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
             "model-*-of-*.safetensors", "model.bin"]


def hub_checkpoint(repo_id: str) -> Path:
    """The local snapshot of Hub repo `repo_id` (downloaded into huggingface_hub's cache when needed)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        if not any((path / f).exists() for f in ("model.safetensors", "model.safetensors.index.json", "model.bin")):
            path = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + ["pytorch_model.bin"]))
    except GatedRepoError:
        raise WeightsError(f"{repo_id}: a gated Hub repo; accept its terms and log in "
                           "(`hf auth login`), then try again") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise WeightsError(f"{repo_id}: no such model on the Hugging Face Hub (or it is private)") from None
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise WeightsError(f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {how}: "
                           "connect to the internet, or pass the path of a local checkpoint") from None
    except Exception as e:  # huggingface_hub and requests raise many types
        raise WeightsError(f"{repo_id}: cannot fetch from the Hugging Face Hub: {one_line(e)}") from None
    return path
