"""Reading SRT checkpoints written by RecBole's trainer (``saved/SRT-....pth``)."""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A file that is not a readable RecBole checkpoint of an SRT model."""


def load_srt_checkpoint(path: str | Path, device: str = "cpu") -> dict:
    """Read a RecBole checkpoint of an SRT model: ``{"config": Config, "state_dict": {...}, ...}``.

    RecBole pickles its ``Config`` into the file, so this unpickles it (``weights_only=False``):
    load only checkpoints you trust, such as your own training runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # any unreadable file: zip, pickle, EOF, ... errors
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= checkpoint.keys():
        raise CheckpointError(f"{path}: not a RecBole checkpoint (no 'config' and 'state_dict')")
    model = checkpoint["config"]["model"]
    if model != "SRT":
        raise CheckpointError(f"{path}: a {model} checkpoint; only SRT scores items from their text")
    return checkpoint


def feature_size(state_dict: dict) -> int:
    """The feature width the checkpoint's item tower was trained on."""
    return state_dict["item_tower.feature_mean"].shape[0]
