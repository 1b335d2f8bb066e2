"""``run_recbole``: RecBole's ``run_recbole.py`` as a console command, with SRT registered.

Accepts the arguments of RecBole's script (``--model``, ``--dataset``, ``--config_files``,
``--nproc``, ``--ip``, ``--port``, ``--world_size``, ``--group_offset``); any other
``--key=value`` is read by RecBole's ``Config`` as a config override.
"""

from __future__ import annotations

import argparse

import recbole_srt  # noqa: F401  (registers SRT with RecBole)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train and evaluate a RecBole model (SRT included).")
    parser.add_argument("--model", "-m", default="SRT", help="model name (default: SRT)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: ml-100k, bundled)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML config files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per node")
    parser.add_argument("--ip", default="localhost", help="master address for multi-node runs")
    parser.add_argument("--port", default="5678", help="master port for multi-node runs")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes over all nodes")
    parser.add_argument("--group_offset", type=int, default=0, help="rank offset of this node")
    args, _overrides = parser.parse_known_args(argv)  # --key=value overrides: RecBole's Config reads sys.argv
    return args


def main(argv: list[str] | None = None) -> None:
    from recbole.quick_start import run

    args = parse_args(argv)
    run(
        args.model,
        args.dataset,
        config_file_list=args.config_files.split() if args.config_files else None,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )


if __name__ == "__main__":
    main()
