"""What the plugin needs installed beside it, checked before RecBole is imported.

RecBole 1.2.1 is installed on its own, without its dependency metadata (``pip install --no-deps
recbole==1.2.1``): that metadata pins ``ray<=2.6.3``, which has no wheels for Python >= 3.12 and cannot
join a Ray cluster of today. RecBole's real runtime needs are declared by this project (``setup.py``), and
:mod:`recbole_srt.compat` adapts RecBole 1.2.1 to today's numpy, pandas, Ray and hyperopt.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

RECBOLE_VERSION = "1.2.1"
INSTALL_RECBOLE = f"pip install --no-deps recbole=={RECBOLE_VERSION}"


class IncompatibleStackError(RuntimeError):
    """RecBole is missing, or is a version other than the one :mod:`recbole_srt.compat` is written for."""


def check_stack(versions: Callable[[str], str] = importlib.metadata.version) -> None:
    """Refuse to go on without RecBole 1.2.1, saying how to install it.

    Raises:
        IncompatibleStackError: naming what is installed and the pip command that fixes it.
    """
    try:
        installed = versions("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise IncompatibleStackError(
            f"recbole-srt needs RecBole {RECBOLE_VERSION}, which is not installed; install it without its "
            f"stale pins: {INSTALL_RECBOLE}"
        ) from None
    if installed != RECBOLE_VERSION:
        raise IncompatibleStackError(
            f"recbole-srt patches RecBole {RECBOLE_VERSION}'s internals (recbole_srt/compat.py), but "
            f"recbole=={installed} is installed; fix: {INSTALL_RECBOLE}"
        )
