"""openai-whisper checkpoints (`.pt`), as `whisper.load_model` reads them."""

from pathlib import Path

import numpy as np
import torch
from whisper.model import ModelDimensions

from maxwhisper.checkpoints.state import WeightsError, check_state_dict, one_line


def load_pt(path: Path) -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    # weights_only=True works: the checkpoint is a plain dict of a dict of
    # ints ("dims") and a dict of tensors ("model_state_dict"), as
    # whisper.load_model itself loads it
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise WeightsError(f"{path}: cannot read PyTorch checkpoint: {one_line(e)}") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise WeightsError(f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    try:
        dims = ModelDimensions(**ckpt["dims"])
    except TypeError as e:
        raise WeightsError(f"{path}: bad 'dims': {one_line(e)}") from None
    if not isinstance(ckpt["model_state_dict"], dict):
        raise WeightsError(f"{path}: 'model_state_dict' is not a dict")
    sd = {}
    for key, t in ckpt["model_state_dict"].items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise WeightsError(f"{path}: '{key}' is not a float tensor")
        sd[key] = np.ascontiguousarray(t.float().numpy())
    check_state_dict(dims, sd, str(path))
    return dims, sd


