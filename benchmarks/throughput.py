"""Training throughput of SRT's options, measured side by side in one run (a table, not a test).

    python benchmarks/throughput.py                     # CPU: recipes' options on ml-100k
    python benchmarks/throughput.py --widths 16 64 256  # CPU: SRT at those widths (FLOP/s vs matmul peak)
    python benchmarks/throughput.py --gpu-check         # GPU: 3 sizes x fp32/bf16 x eager/compiled, then
                                                        # a small Ray Tune sweep of the srt-paper recipe

Each cell trains ``--steps`` optimiser steps (after ``--warmup``) through :class:`SRTTrainer`'s own
loss, optimiser and schedule on real batches; the cells take turns in ``--rounds`` rounds and a cell's
time is its median round, so a shared machine's load drift hits every cell alike. Cells differ from the
first (the baseline) by one setting, so ``vs baseline`` is the cost of that setting. Every cell reports
its achieved training FLOP/s (forward + backward, :func:`training_step_flops`) as a fraction of the
machine's peak: on a GPU the datasheet's, on a CPU the best dense matmul rate measured in the same run,
on the same threads and dtype (``matmul_peak``, before and after the cells). ``--gpu-check`` without a
GPU runs a tiny CPU version (what CI runs).
Writes ``OUT/throughput.json`` and ``OUT/throughput.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recbole_srt.analysis.flops import training_step_flops
from recbole_srt.pipeline import make_config
from recbole_srt.trainer import training_targets

# Dense peak FLOP/s of one H200 (the NVIDIA H100/H200 SXM datasheet): bf16 tensor cores, tf32 for fp32.
PEAK_FLOPS = {"bf16": 989e12, "fp32": 495e12}
CPU_CELLS = {
    "baseline (constant lr, CE, fp32, eager)": {},
    "warmup_cosine schedule": {"lr_scheduler": "warmup_cosine", "warmup_fraction": 0.1},
    "onecycle schedule": {"lr_scheduler": "onecycle", "warmup_fraction": 0.3},
    "SSM, batch-shared negatives": {"loss_type": "SSM", "negatives": "batch"},
    "SSM, per-example negatives": {"loss_type": "SSM", "negatives": "example"},
    "bf16 autocast": {"precision": "bf16"},
    "torch.compile": {"compile": True},
}
GPU_SIZES = {"small": (2, 64), "medium": (4, 256), "large": (8, 512)}  # (n_layers, hidden_size)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HEAD_DIM = 32  # --widths: n_heads = hidden_size / 32, inner_size = 4 x hidden_size


def width_cells(widths: list[int]) -> dict[str, dict]:
    """One cell per width, the other settings as given: the per-width cost a sweep plan needs."""
    return {
        f"H{w}": {"hidden_size": w, "inner_size": 4 * w, "n_heads": max(1, w // HEAD_DIM)} for w in widths
    }


def matmul_peak(dtype: torch.dtype, device: str = "cpu", size: int = 1024, repeats: int = 10) -> float:
    """The best dense matmul rate (FLOP/s) of ``size`` x ``size`` matrices on this device and thread count."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def gpu_cells(tiny: bool) -> dict[str, dict]:
    sizes = {"tiny": (1, 16)} if tiny else GPU_SIZES
    cells = {}
    for (size, (layers, hidden)), precision, compiled in itertools.product(
        sizes.items(), ("fp32", "bf16"), (False, True)
    ):
        name = f"{size} (L{layers} H{hidden}), {precision}, {'compiled' if compiled else 'eager'}"
        shape = dict(n_layers=layers, hidden_size=hidden, inner_size=4 * hidden, n_heads=max(1, hidden // 64))
        cells[name] = {**shape, "precision": precision, "compile": compiled}
    return cells


def prepare(model_name: str, dataset: str, settings: dict, n_batches: int):
    """A cell: SRTTrainer over ``settings``, ``n_batches`` real batches and one optimiser step."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = make_config(
        model_name, dataset, config_dict={"show_progress": False, "state": "ERROR", **settings}
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model(model_name)(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    trainer.optimizer.total_steps = config["epochs"] * len(train_data)
    batches = [b.to(config["device"]) for _, b in zip(range(n_batches), itertools.cycle(train_data))]

    def step(batch) -> None:
        trainer.optimizer.zero_grad()
        trainer._precise_loss(batch).backward()
        trainer.optimizer.step()

    facts = {
        "batches_per_epoch": len(train_data),
        "sequences_per_step": sum(len(b) for b in batches) / len(batches),
        "targets_per_step": sum(int(training_targets(model, b)) for b in batches) / len(batches),
        "train_flops_per_step": training_step_flops(model, batches[0]),
        "params_non_embedding": model.num_params().non_embedding,
        "device": str(config["device"]),
        "cuda": config["device"].type == "cuda",
    }
    return step, batches, facts


def measure(cells: dict[str, dict], dataset: str, steps: int, warmup: int, rounds: int) -> list[dict]:
    """Seconds per step of every cell, the cells interleaved round by round (load drifts hit all alike)."""
    prepared = {name: prepare("SRT", dataset, settings, warmup + steps) for name, settings in cells.items()}
    peaks_before = {precision: matmul_peak(dtype) for precision, dtype in DTYPES.items()}
    for step, batches, _ in prepared.values():
        for batch in batches[:warmup]:  # compilation and allocator warm-up, untimed
            step(batch)
    times: dict[str, list[float]] = {name: [] for name in cells}
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        for name, (step, batches, facts) in prepared.items():
            chunk = batches[warmup + r * per_round : warmup + (r + 1) * per_round] or batches[warmup:]
            if facts["cuda"]:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for batch in chunk:
                step(batch)
            if facts["cuda"]:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / len(chunk))
    cpu_peaks = {p: max(peaks_before[p], matmul_peak(dtype)) for p, dtype in DTYPES.items()}
    rows = []
    for name, (_, _, facts) in prepared.items():
        per_step = float(np.median(times[name]))
        precision = "bf16" if cells[name].get("precision") == "bf16" else "fp32"
        peak = PEAK_FLOPS[precision] if facts["cuda"] else cpu_peaks[precision]
        row = {"cell": name, "s_per_step": per_step, "s_per_epoch": per_step * facts["batches_per_epoch"],
               "sequences_per_s": facts["sequences_per_step"] / per_step,
               "tokens_per_s": facts["targets_per_step"] / per_step,
               "train_flops_per_s": facts["train_flops_per_step"] / per_step, "peak_flops_per_s": peak,
               "fraction_of_peak": facts["train_flops_per_step"] / per_step / peak, **facts}  # fmt: skip
        rows.append(row)
    return rows


def sweep(out: Path, tiny: bool, dataset: str) -> dict:
    """The srt-paper recipe swept over two widths with fractional GPUs (benchmarks/sweep.py)."""
    widths = "[16]" if tiny else "[64, 128, 256, 512]"
    command = [sys.executable, str(Path(__file__).with_name("sweep.py")), "--config=gpu-check"]
    command += [f"--storage={out}", "--overwrite", f"--hidden_size={widths}", f"--dataset={dataset}"]
    if tiny:
        command += ["--gpu=0", "--recbole.train_batch_size=512", "--recbole.MAX_ITEM_LIST_LENGTH=10"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    summary = out / "gpu-check" / "results.json"
    return {
        "returncode": done.returncode,
        "seconds": time.perf_counter() - start,
        "results": json.loads(summary.read_text()) if summary.is_file() else None,
        "log_tail": (done.stdout + done.stderr)[-2000:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--gpu-check", action="store_true", help="sizes x precision x compile, then a GPU sweep")
    p.add_argument("--widths", type=int, nargs="+", help="one cell per hidden size instead of the options")
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps per cell")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; a cell's time is its median")
    p.add_argument("--out", type=Path, default=Path("results/throughput"))
    p.add_argument("--config-dict", default="{}", help="YAML mapping of settings for every cell")
    args = p.parse_args(argv)
    import yaml

    from recbole_srt.cli import quiet_library_warnings

    try:
        extra = yaml.safe_load(args.config_dict)
    except yaml.YAMLError as error:
        p.error(f"--config-dict is not valid YAML ({getattr(error, 'problem', error)})")
    if not isinstance(extra, dict):
        p.error(f"--config-dict must be a YAML mapping of settings, got {args.config_dict!r}")
    quiet_library_warnings()
    base = {"epochs": 1, "train_batch_size": 512, "MAX_ITEM_LIST_LENGTH": 50} | extra
    tiny = args.gpu_check and not torch.cuda.is_available()
    cells = gpu_cells(tiny) if args.gpu_check else width_cells(args.widths) if args.widths else CPU_CELLS
    if args.gpu_check and not tiny:
        base["gpu_id"] = "0"
    args.out.mkdir(parents=True, exist_ok=True)
    cells = {name: {**base, **settings} for name, settings in cells.items()}
    rows = measure(cells, args.dataset, args.steps, args.warmup, args.rounds)
    for row in rows:
        print(f"{row['cell']}: {row['s_per_step'] * 1000:.1f} ms/step, {row['sequences_per_s']:,.0f} seq/s, "
              f"{row['fraction_of_peak']:.1%} of peak")  # fmt: skip
    table = pd.DataFrame(rows)
    table["vs baseline"] = table["s_per_step"] / table["s_per_step"].iloc[0]
    machine = {"device": rows[0]["device"], "torch": torch.__version__, "threads": torch.get_num_threads()}
    report = {"machine": machine, "settings": base, "cells": rows}
    if args.gpu_check:
        report["sweep"] = sweep(args.out, tiny, args.dataset)
    (args.out / "throughput.json").write_text(json.dumps(report, indent=2, default=str))
    columns = ["cell", "params_non_embedding", "s_per_step", "s_per_epoch", "tokens_per_s", "vs baseline"]
    columns += ["train_flops_per_s", "peak_flops_per_s", "fraction_of_peak"]
    text = table[columns].to_markdown(index=False, floatfmt=".4g") + "\n"
    if "sweep" in report:
        text += f"\nRay Tune sweep of the srt-paper recipe: exit {report['sweep']['returncode']}, "
        text += f"{report['sweep']['seconds']:.0f} s\n"
    (args.out / "throughput.md").write_text(text)
    print(text)
    return 0 if report.get("sweep", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
