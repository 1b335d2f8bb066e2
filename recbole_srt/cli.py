"""``run_recbole``: RecBole's ``run_recbole.py`` as a console command, with SRT registered.

Accepts the arguments of RecBole's script (``--model``, ``--dataset``, ``--config_files``,
``--nproc``, ``--ip``, ``--port``, ``--world_size``, ``--group_offset``); every other
``--key=value`` is a setting (YAML value; an unknown key is an error naming the closest ones).
Runs :func:`recbole_srt.pipeline.run` (one process per rank with ``--nproc``).

Also the CLIs' shared plumbing: :class:`user_errors` (one line on stderr instead of a traceback;
``SRT_DEBUG=1`` shows it) and :func:`quiet_library_warnings`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from dataset_prep.errors import debug_requested
from recbole_srt.overrides import known_config_keys, parse_overrides
from recbole_srt.pipeline import make_config, run

# What the CLIs report in one line: the project's errors (CheckpointError, ItemFeatureError,
# OverrideError, SettingError, ...) and RecBole's own checks are ValueErrors; and unreadable files.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class RankError(ValueError):
    """A process of a distributed run (``--nproc``) that died: killed, out of memory, crashed."""


class user_errors:  # noqa: N801  (used as a context manager, like contextlib's lower-case helpers)
    """Turn :data:`USER_ERRORS` into ``prog: error: message`` on stderr (:attr:`status` 2) and Ctrl-C
    into ``prog: interrupted`` (130); truthy once one happened.

    ::

        with user_errors("srt-finetune") as failed:
            ...
        if failed:
            return failed.status

    With ``SRT_DEBUG`` set (and not ``0``) the exception propagates with its traceback.
    """

    def __init__(self, prog: str):
        self.prog, self.status = prog, 0

    def __enter__(self) -> user_errors:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if debug_requested() or not isinstance(error, (*USER_ERRORS, KeyboardInterrupt)):
            return False
        interrupted = isinstance(error, KeyboardInterrupt)
        print(f"{self.prog}: interrupted" if interrupted else f"{self.prog}: error: {error}", file=sys.stderr)
        self.status = 130 if interrupted else 2
        return True

    def __bool__(self) -> bool:
        return self.status != 0


def quiet_library_warnings() -> None:
    """Silence the harmless warnings RecBole's stack prints on every run (and only those)."""
    # RecBole's trainer builds torch.cuda.amp.GradScaler, deprecated for torch.amp.GradScaler.
    warnings.filterwarnings("ignore", r"`torch\.cuda\.amp\.GradScaler", FutureWarning, r"recbole\.trainer")


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="run_recbole",
        description="Train and evaluate a RecBole model (SRT included).",
        epilog="Any other --key=value is a setting, e.g. --epochs=10 --hidden_size=128.",
    )
    parser.add_argument("--model", "-m", default="SRT", help="model name (default: SRT)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: ml-100k, bundled)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML config files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per node")
    parser.add_argument("--ip", default="localhost", help="master address for multi-node runs")
    parser.add_argument("--port", default="5678", help="master port for multi-node runs")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes over all nodes")
    parser.add_argument("--group_offset", type=int, default=0, help="rank offset of this node")
    return parser.parse_known_args(argv)


def _rank(local_rank: int, args: argparse.Namespace, config_files: list[str] | None, settings: dict) -> None:
    """One DDP process (``torch.multiprocessing.spawn`` target). A user error is its one line (naming the
    rank) and exit status 2, which :func:`main` takes as said."""
    import torch.distributed

    import recbole_srt  # noqa: F401  (registers SRT in the spawned process)

    distributed = {
        "local_rank": local_rank,
        "world_size": args.world_size if args.world_size > 0 else args.nproc,
        "ip": args.ip,
        "port": args.port,
        "nproc": args.nproc,
        "offset": args.group_offset,
    }
    with user_errors(f"run_recbole (rank {local_rank})") as failed:
        record = run(make_config(args.model, args.dataset, config_files, {**settings, **distributed})).record
        torch.distributed.destroy_process_group()
    if failed:
        sys.exit(failed.status)
    if local_rank == 0:
        _report(record)


def _spawn(args: argparse.Namespace, config_files: list[str] | None, settings: dict) -> int:
    """Run :func:`_rank` in ``args.nproc`` processes; the exit status (2: a rank reported its own error). A
    rank that dies otherwise stops the others and is one :class:`RankError` naming it and its exit code."""
    import torch.multiprocessing as mp

    try:
        mp.spawn(_rank, args=(args, config_files, settings), nprocs=args.nproc, join=True)
    except mp.ProcessExitedException as error:
        if error.exit_code == 2:  # the rank said why, in its own line
            return 2
        signal = f" ({error.signal_name})" if error.signal_name else ""
        raise RankError(
            f"rank {error.error_index} (pid {error.error_pid}) exited with code {error.exit_code}{signal}; "
            "the other ranks were stopped (the best checkpoint so far is whole)"
        ) from None
    return 0


def _report(record) -> None:
    print(f"best valid: {json.dumps(record.best_valid)}")
    print(f"test result: {json.dumps(record.test)}")
    if record.checkpoint:
        print(f"checkpoint: {record.checkpoint}")


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse_args(argv)
    config_files = args.config_files.split() if args.config_files else None
    quiet_library_warnings()
    with user_errors("run_recbole") as failed:
        settings = parse_overrides(rest, known_config_keys(config_files or ()))
        if args.nproc > 1 or args.world_size > 0:
            make_config(args.model, args.dataset, config_files, settings)  # bad settings: here, not per rank
            if _spawn(args, config_files, settings):
                return 2
        else:
            _report(run(make_config(args.model, args.dataset, config_files, settings)).record)
    return failed.status


if __name__ == "__main__":
    sys.exit(main())
