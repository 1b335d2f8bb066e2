"""RecBole 1.2.1 on today's Python stack: the one place that makes it correct.

RecBole 1.2.1 (2023) predates numpy 2, pandas 3, setuptools 82, pyarrow 26 and torch 2.6.
Each breakage and its remedy (measured in ``../shared/notes/recbole-1.2.1-today.md``):

======================  ==========================================  ==============================
dependency              what breaks                                 remedy
======================  ==========================================  ==============================
numpy >= 2              ``np.float_`` in RecBole's Config,          pin ``numpy<2`` (setup.py),
                        ``np.bool8`` in ray 2.6.3                   checked by :func:`check_stack`
pandas >= 3             Copy-on-Write turns RecBole's               pin ``pandas<3``, checked by
                        ``fillna(inplace=True)`` into a no-op:      :func:`check_stack` (refuses to
                        missing tokens become -2**63, silently      run rather than corrupt data)
setuptools >= 82        no ``pkg_resources``, which ray imports     pin ``setuptools<82``, checked
pyarrow >= 26           needs numpy 2 (undeclared), ``ray.init``    pin ``pyarrow<26``, checked
                        fails
torch >= 2.6            ``torch.load`` defaults to                  :func:`trust_recbole_checkpoints`
                        ``weights_only=True``; RecBole pickles its  (only RecBole's own loaders read
                        ``Config`` into every checkpoint            full pickles)
numpy >= 1.24           ``np.float``/``np.int``/... removed; RecBole  :func:`numpy_aliases` (the aliases
                        sets them only in ``Config.__init__``, so    ``Config.compatibility_settings``
                        metrics crash after ``load_data_and_model``  installs, at import)
                        (its Config is unpickled, not constructed)
RecBole 1.2.1 itself    its defaults (``loss_type: CE`` for SASRec  :func:`default_no_negatives_for_ce`
                        and BERT4Rec, uniform ``train_neg_sample_   (unless the user sets them)
                        args`` in overall.yaml) raise a ValueError
======================  ==========================================  ==============================

:func:`apply` runs them all; ``import recbole_srt`` calls it.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable

import torch
from recbole.config import Config
from recbole.utils import ModelType

# (distribution, first incompatible major version, why)
_UPPER_BOUNDS: tuple[tuple[str, int, str], ...] = (
    ("numpy", 2, "RecBole 1.2.1 uses np.float_ and ray 2.6.3 uses np.bool8, both removed in numpy 2"),
    ("pandas", 3, "pandas 3 Copy-on-Write makes RecBole's fillna(inplace=True) a no-op: data is corrupted"),
    ("setuptools", 82, "setuptools 82 removed pkg_resources, which ray 2.6.3 imports"),
    ("pyarrow", 26, "pyarrow 26 requires numpy 2, which RecBole 1.2.1 cannot use"),
)

# RecBole modules that torch.load checkpoints RecBole itself wrote (Trainer.resume_checkpoint,
# Trainer.evaluate(load_best_model=True), quick_start.load_data_and_model).
_RECBOLE_CHECKPOINT_READERS = ("recbole.trainer.trainer", "recbole.quick_start.quick_start")


class IncompatibleStackError(RuntimeError):
    """An installed package version that RecBole 1.2.1 cannot run correctly with."""


def _major(version: str) -> int:
    return int(version.split(".")[0])


def check_stack(versions: Callable[[str], str] = importlib.metadata.version) -> None:
    """Refuse to run on a dependency version known to break or silently corrupt RecBole 1.2.1.

    Raises:
        IncompatibleStackError: naming every offending package, why, and the pip command that fixes it.
    """
    problems = []
    for dist, bad_major, why in _UPPER_BOUNDS:
        try:
            installed = versions(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if _major(installed) >= bad_major:
            problems.append((dist, installed, bad_major, why))
    if problems:
        lines = [f"  {d}=={v}: {why}" for d, v, _, why in problems]
        fix = " ".join(f"'{d}<{m}'" for d, _, m, _ in problems)
        raise IncompatibleStackError(
            "recbole-srt cannot run RecBole 1.2.1 correctly with:\n"
            + "\n".join(lines)
            + f"\nFix: pip install {fix}"
        )


_torch_load = torch.load


def _load_trusting_recbole(f, *args, **kwargs):
    """``torch.load``; defaults to ``weights_only=False`` only when called from RecBole's loaders.

    RecBole pickles its ``Config`` into every checkpoint it writes; torch >= 2.6 refuses to
    read that with ``weights_only=True``. Only calls made directly by the modules in
    ``_RECBOLE_CHECKPOINT_READERS`` (which read back the checkpoints RecBole itself wrote: trusted
    local files) get full unpickling; every other caller keeps torch's safe default.
    """
    if sys._getframe(1).f_globals.get("__name__") in _RECBOLE_CHECKPOINT_READERS:
        kwargs.setdefault("weights_only", False)
    return _torch_load(f, *args, **kwargs)


def trust_recbole_checkpoints() -> None:
    """Let RecBole's own checkpoint loaders read full pickles on torch >= 2.6 (idempotent)."""
    torch.load = _load_trusting_recbole


def numpy_aliases() -> None:
    """Install the numpy aliases RecBole 1.2.1 relies on, as ``Config.compatibility_settings`` does.

    RecBole's metrics use ``np.float`` (removed in numpy 1.24) and only ``Config.__init__`` aliases
    it; a Config unpickled from a checkpoint (``load_data_and_model``) never runs that, so a fresh
    process that loads a checkpoint and evaluates it crashes in ``NDCG``.
    """
    Config.compatibility_settings(None)


_recbole_set_default_parameters = Config._set_default_parameters


def _set_default_parameters(self: Config) -> None:
    final = self.final_config_dict
    if (
        final["MODEL_TYPE"] == ModelType.SEQUENTIAL
        and final.get("loss_type") == "CE"
        and "train_neg_sample_args" not in self.external_config_dict
    ):
        final["train_neg_sample_args"] = None
    _recbole_set_default_parameters(self)


def default_no_negatives_for_ce() -> None:
    """Sequential models trained with full cross-entropy default to no sampled negatives.

    RecBole 1.2.1 ships ``train_neg_sample_args: uniform`` in overall.yaml and then refuses it for
    sequential ``loss_type: CE`` models (SASRec's and BERT4Rec's own default), so
    ``run_recbole --model=SASRec`` fails unless the user sets ``train_neg_sample_args: ~``.
    An explicit user setting still reaches RecBole's check unchanged.
    """
    Config._set_default_parameters = _set_default_parameters


def apply() -> None:
    """Check the stack, then patch what a pin cannot fix."""
    check_stack()
    numpy_aliases()
    trust_recbole_checkpoints()
    default_no_negatives_for_ce()
