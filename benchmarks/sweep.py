"""Scaling sweep: Ray Tune over model sizes x data fractions for SRT and its ID-based baselines.

    python benchmarks/sweep.py --config properties/sweep/smoke.yaml [--storage results]
        [--name NAME] [--address ray://HOST:10001] [--resume | --overwrite] [--key=value ...]

The grid is ``models x n_layers x hidden_size x data_fractions x seeds`` (``per_model`` changes it per
model); ``n_heads = max(1, hidden_size // head_dim)``, ``inner_size = ffn_ratio * hidden_size``. Each
point is a trial running :func:`recbole_srt.sweep.run_trial` with the preset's ``cpu``/``gpu`` (with no
GPU in the cluster the sweep warns and runs on CPU instead of waiting forever). A failing trial is
retried ``retries`` times from its last checkpoint, then recorded with status ``ERROR``. ``--resume``
continues an interrupted sweep: from Ray's state in ``<storage>/<name>/`` (unfinished and errored trials
from their checkpoints), or, on a machine without it, from that folder's ``epochs.csv`` (trials that
ended are kept, the others start over). Writes ``epochs.csv``/``epochs.parquet`` (one row per (trial,
epoch), the table ``benchmarks/scaling.py`` fits), ``trials.csv``, ``results.json`` and
``sweep_valid_ndcg.png`` to ``<storage>/<name>/``, also when interrupted (those trials ``UNFINISHED``);
docs/sweeps-and-scaling.md has the details.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import warnings
from importlib.resources import files
from pathlib import Path

import pandas as pd
import ray
from matplotlib.figure import Figure
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler

from recbole_srt.analysis import EPOCH_COLUMNS, json_ready
from recbole_srt.overrides import OverrideError, apply_overrides, parse_overrides, read_config_file
from recbole_srt.sweep import run_trial

DEFAULTS: dict = {
    "name": "sweep",
    "dataset": "ml-100k",
    "data_path": None,
    "config_files": [],
    "models": ["SRT"],
    "n_layers": [2],
    "hidden_size": [64],
    "data_fractions": [1.0],
    "seeds": [0],
    "per_model": {},
    "head_dim": 64,
    "ffn_ratio": 4,
    "recbole": {},
    "cpu": 1,
    "gpu": 0,
    "retries": 1,
    "scheduler": None,
    "metric": "valid_ndcg@10",
    "mode": "max",
    "local_num_cpus": None,
    "fail_trials": {},
}
GRID_AXES = ("n_layers", "hidden_size", "data_fractions", "seeds")
PER_MODEL_KEYS = (*GRID_AXES, "recbole")
SPEC_COLUMNS = ("model", "n_layers", "hidden_size", "n_heads", "inner_size", "data_fraction", "seed")
RAY_COLUMNS = {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_id", "experiment_tag", "should_checkpoint"}
# A trial with one of these statuses ended (early stopping or its epoch budget) and is never run again;
# UNFINISHED ones (interrupted) and ERROR ones are, by --resume.
ENDED = ("TERMINATED", "EARLY_STOPPED")


# --- the preset ---------------------------------------------------------------------------------


def find_preset(config: str) -> Path:
    """``config`` as a path, else the name of a preset shipped in ``properties/sweep/``."""
    path = Path(config)
    if path.is_file():
        return path
    shipped = Path(str(files("recbole_srt.properties") / "sweep" / f"{config.removesuffix('.yaml')}.yaml"))
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no sweep preset {config!r} (neither a file nor a shipped preset name)")


def load_preset(config: str, overrides: dict) -> dict:
    """The preset YAML over :data:`DEFAULTS`, with (dotted) ``overrides``; unknown keys are errors."""
    loaded = read_config_file(find_preset(config))
    preset = apply_overrides({**DEFAULTS, **loaded}, overrides)
    unknown = sorted(set(preset) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown preset keys {unknown}; known: {sorted(DEFAULTS)}")
    for model, changes in preset["per_model"].items():
        bad = sorted(set(changes) - set(PER_MODEL_KEYS))
        if bad:
            raise ValueError(f"per_model.{model}: unknown keys {bad}; allowed: {list(PER_MODEL_KEYS)}")
    for where, axes in [("", preset), *((f"per_model.{m}.", c) for m, c in preset["per_model"].items())]:
        for axis in set(GRID_AXES) & set(axes):
            values = axes[axis]
            if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
                raise ValueError(f"{where}{axis} must be a list of numbers, got {values!r}")
    bad_hooks = {k: v for k, v in preset["fail_trials"].items() if v not in ("always", "once")}
    if bad_hooks:
        raise ValueError(f"fail_trials values must be 'always' or 'once', got {bad_hooks}")
    if preset["data_path"] is not None:
        preset["data_path"] = str(Path(preset["data_path"]).resolve())  # workers run in their trial folders
    preset["config_files"] = [str(Path(f).resolve()) for f in preset["config_files"]]
    return preset


def build_grid(preset: dict, gpu: float) -> list[dict]:
    """One spec per trial: everything :func:`run_trial` needs, JSON-serialisable."""
    grid = []
    for model in preset["models"]:
        axes = {**{k: preset[k] for k in GRID_AXES}, **preset["per_model"].get(model, {})}
        recbole = {**preset["recbole"], **axes.get("recbole", {})}
        for n_layers, hidden, fraction, seed in itertools.product(*(axes[k] for k in GRID_AXES)):
            name = f"{model}-L{n_layers}-H{hidden}-f{fraction:g}-s{seed}"
            grid.append({
                "name": name,
                "model": model,
                "dataset": preset["dataset"],
                "data_path": preset["data_path"],
                "config_files": preset["config_files"],
                "n_layers": int(n_layers),
                "hidden_size": int(hidden),
                "n_heads": max(1, int(hidden) // preset["head_dim"]),
                "inner_size": int(preset["ffn_ratio"] * hidden),
                "data_fraction": float(fraction),
                "seed": int(seed),
                "recbole": recbole,
                "cpu": preset["cpu"],
                "gpu": gpu,
                "fail": preset["fail_trials"].get(name),
            })  # fmt: skip
    names = [spec["name"] for spec in grid]
    if len(set(names)) != len(names):
        raise ValueError("the grid has repeated points; check per_model and the axes for duplicates")
    return grid


# --- Ray ----------------------------------------------------------------------------------------


def connect(address: str | None, local_num_cpus: int | None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Raises:
        ConnectionError: one line naming the address, and the token setting a Ray >= 2.59 cluster needs.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address)
        except ConnectionError as error:
            hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                "; a cluster started by `ray start` with Ray >= 2.59 requires token authentication: "
                "export RAY_AUTH_MODE=token (the token: the head node's ~/.ray/auth_token, or RAY_AUTH_TOKEN)"
            )  # fmt: skip
            raise ConnectionError(f"cannot join the Ray cluster at {address} ({error}){hint}") from None
    else:
        ray.init(num_cpus=local_num_cpus, include_dashboard=False, log_to_driver=False)


def trial_gpu(requested: float) -> float:
    """``requested`` GPUs per trial, or 0 (with a warning) when the cluster has no GPU at all."""
    available = ray.cluster_resources().get("GPU", 0)
    if requested > 0 and available == 0:
        warnings.warn(
            f"the preset asks for gpu: {requested} per trial but the Ray cluster has no GPU; running on CPU",
            stacklevel=2,
        )
        return 0.0
    if requested > available:
        raise ValueError(f"gpu: {requested} per trial, but the cluster has only {available} GPUs")
    return float(requested)


def _trial_label(trial) -> str:
    return trial.config["trial"]["name"]


class TrialLines(tune.Callback):
    """One line per reported epoch, finished trial and failure."""

    def __init__(self, metric: str):
        self.metric = metric

    def on_trial_result(self, iteration, trials, trial, result, **info):
        print(
            f"[{_trial_label(trial)}] epoch {result.get('epoch')}: train_loss {result.get('train_loss'):.4f} "
            f"{self.metric} {result.get(self.metric, math.nan):.4f} ({result.get('wall_time_s', 0):.0f} s)",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        print(f"[{_trial_label(trial)}] finished", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.num_failures:
            print(f"[{_trial_label(trial)}] failed (attempt {trial.num_failures}); retrying", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[{_trial_label(trial)}] ERROR (no retries left)", flush=True)


def make_tuner(preset: dict, grid: list[dict], storage: Path, name: str, restore: bool) -> tune.Tuner:
    """A new Tuner over ``grid``, or with ``restore`` the one Ray saved at ``storage/name``."""
    resources = {"cpu": preset["cpu"], "gpu": grid[0]["gpu"]}
    trainable = tune.with_resources(run_trial, resources)
    if restore:
        return tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    scheduler = None
    if preset["scheduler"]:
        options = {k: v for k, v in preset["scheduler"].items() if k != "type"}
        if preset["scheduler"].get("type", "asha") != "asha":
            raise ValueError(f"scheduler.type must be 'asha', got {preset['scheduler']['type']!r}")
        scheduler = ASHAScheduler(time_attr="training_iteration", **options)
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(
            metric=preset["metric"],
            mode=preset["mode"],
            scheduler=scheduler,
            trial_name_creator=_trial_label,
            trial_dirname_creator=_trial_label,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=preset["retries"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[TrialLines(preset["metric"])],
            verbose=0,  # TrialLines prints the progress
        ),
    )


# --- the results table --------------------------------------------------------------------------


def trial_rows(spec: dict, history: pd.DataFrame | None, error: str | None, ended: bool) -> pd.DataFrame:
    """The (trial, epoch) rows of one trial, with ``is_best_epoch`` and ``status``: ``ERROR``, ``UNFINISHED``
    (not ``ended``: interrupted), or ``EARLY_STOPPED``/``TERMINATED`` (ended before/at its last epoch).

    Epochs reported twice (a trial restarted from its best checkpoint re-runs the later epochs)
    keep their last report. Test metrics stay only on the best epoch's row.
    """
    spec_values = {"trial_id": spec["name"], **{c: spec[c] for c in SPEC_COLUMNS}}
    if history is None or history.empty or "epoch" not in history:
        rows = pd.DataFrame([{**spec_values, "epoch": pd.NA, "is_best_epoch": False}])
        early = False
    else:
        reported = [c for c in history.columns if c not in RAY_COLUMNS and not c.startswith("config/")]
        rows = history[reported].drop_duplicates("epoch", keep="last").sort_values("epoch")
        rows = rows.assign(**spec_values)
        rows["is_best_epoch"] = rows["epoch"] == int(rows["best_epoch"].iloc[-1])
        test_columns = [c for c in rows.columns if c.startswith("test_")]
        rows.loc[~rows["is_best_epoch"], test_columns] = math.nan
        early = rows["epoch"].iloc[-1] < rows["max_epochs"].iloc[-1] - 1
    ended_as = "EARLY_STOPPED" if early else "TERMINATED"
    rows["status"] = "ERROR" if error else ended_as if ended else "UNFINISHED"
    rows["error"] = error
    extra = [c for c in rows.columns if c not in EPOCH_COLUMNS]
    return rows.reindex(columns=[*EPOCH_COLUMNS, *extra]).reset_index(drop=True)  # missing columns: NaN


def describe_error(error: BaseException) -> str:
    """``Type: message`` of the exception a trial raised (unwrapped from Ray's task error), one line."""
    cause = getattr(error, "cause", None) or error
    message = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {message[-1] if message else ''}"


def collect(results: tune.ResultGrid) -> pd.DataFrame:
    """The tidy table of every trial and epoch in ``results``; a trial Ray has not terminated (it was
    interrupted, or never started) is ``UNFINISHED``."""
    trials = tune.ExperimentAnalysis(results.experiment_path).trials
    ended = {trial.config["trial"]["name"] for trial in trials if trial.status == "TERMINATED"}
    frames = []
    for result in results:
        spec = result.config["trial"]
        error = None if result.error is None else describe_error(result.error)
        frames.append(trial_rows(spec, result.metrics_dataframe, error, spec["name"] in ended))
    return pd.concat(frames, ignore_index=True).sort_values(["model", "trial_id", "epoch"], ignore_index=True)


def ended_trials(path: Path | None) -> pd.DataFrame:
    """The rows of the trials that ended in an earlier run's ``epochs.csv`` (none without a file).

    They let ``--resume`` continue a sweep on another machine from its committed results: those trials
    are kept as they are, and only the others run.
    """
    if path is None or not path.is_file():
        return pd.DataFrame(columns=[*EPOCH_COLUMNS, "error"])
    epochs = pd.read_csv(path, dtype={"error": "string"})
    return epochs[epochs["status"].isin(ENDED)].reset_index(drop=True)


def merge_runs(earlier: pd.DataFrame, latest: pd.DataFrame) -> pd.DataFrame:
    """``latest``'s trials and those of ``earlier`` it does not hold, sorted as :func:`collect` sorts."""
    kept = earlier[~earlier["trial_id"].isin(latest["trial_id"])]
    frames = [frame for frame in (kept, latest) if not frame.empty]
    epochs = pd.concat(frames, ignore_index=True) if frames else latest
    return epochs.sort_values(["model", "trial_id", "epoch"], ignore_index=True)


def summarise_trials(epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its best epoch's row (or its only row), plus the number of epochs run."""
    counts = epochs.groupby("trial_id")["epoch"].count().rename("epochs_run")
    best = epochs[epochs["is_best_epoch"] | epochs["epoch"].isna()].drop_duplicates("trial_id")
    return best.merge(counts, on="trial_id").reset_index(drop=True)


def plot_valid_ndcg(epochs: pd.DataFrame, path: Path) -> None:
    """Valid NDCG@10 per epoch, one line per trial, one colour per model."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (model, rows) in enumerate(epochs.dropna(subset=["valid_ndcg@10"]).groupby("model")):
        for j, (_, trial) in enumerate(rows.groupby("trial_id")):
            ax.plot(trial["epoch"], trial["valid_ndcg@10"], marker="o", ms=3, color=f"C{i}", alpha=0.7,
                    label=model if j == 0 else None)  # fmt: skip
    ax.set(xlabel="epoch", ylabel="valid NDCG@10", title="Sweep: validation NDCG@10 per trial")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(out: Path, epochs: pd.DataFrame, preset: dict) -> dict:
    """Write the tables, ``results.json`` and the plot to ``out``; return the JSON summary."""
    trials = summarise_trials(epochs)
    epochs.to_csv(out / "epochs.csv", index=False)
    epochs.astype({"error": "string"}).to_parquet(out / "epochs.parquet", index=False)
    trials.to_csv(out / "trials.csv", index=False)
    plot_valid_ndcg(epochs, out / "sweep_valid_ndcg.png")
    metric = preset["metric"]
    ok = trials[trials["status"].isin(ENDED)].dropna(subset=[metric])
    by_model = ok.groupby("model")[metric]
    best = ok.loc[by_model.idxmax() if preset["mode"] == "max" else by_model.idxmin()]
    keep = ["trial_id", "n_layers", "hidden_size", "data_fraction", "epoch", metric, "test_ndcg@10",
            "test_recall@10"]  # fmt: skip
    summary = json_ready({
        "experiment": str(out),
        "preset": preset,
        "trials": len(trials),
        "status": trials["status"].value_counts().to_dict(),
        "errors": trials.dropna(subset=["error"]).set_index("trial_id")["error"].to_dict(),
        "best_per_model": {row["model"]: {k: row[k] for k in keep} for _, row in best.iterrows()},
        "outputs": ["epochs.csv", "epochs.parquet", "trials.csv", "results.json", "sweep_valid_ndcg.png"],
    })  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Any other --key=value overrides a preset key (YAML value; dotted keys reach nested ones), "
        "e.g. --recbole.epochs=5 --hidden_size=[64,128].",
    )
    p.add_argument("--config", required=True, help="preset YAML, or a shipped preset name (smoke, paper)")
    p.add_argument("--storage", type=Path, default=Path("results"), help="results root (default: ./results)")
    p.add_argument("--name", default=None, help="experiment name (default: the preset's name)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else local)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep at storage/name: from Ray's state there, else from its epochs.csv "
        "(the trials it lists as ended are kept, the others run)",
    )
    mode.add_argument("--overwrite", action="store_true", help="delete storage/name first")
    args, rest = p.parse_known_args(argv)
    try:
        args.overrides = parse_overrides(rest, DEFAULTS)
    except OverrideError as error:
        p.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        preset = load_preset(args.config, args.overrides)
    except (OSError, ValueError) as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    name = args.name or preset["name"]
    storage = args.storage.resolve()
    out = storage / name
    if out.exists() and not (args.resume or args.overwrite):
        print(
            f"sweep: error: {out} exists; --resume to continue it, --overwrite to start over", file=sys.stderr
        )
        return 2
    if args.overwrite:
        shutil.rmtree(out, ignore_errors=True)

    try:
        connect(args.address, preset["local_num_cpus"])
    except ConnectionError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    restore = args.resume and tune.Tuner.can_restore(out)  # Ray's own state: it knows its own trials
    # Trials that ended in an earlier run, maybe on another machine: kept in the outputs even when Ray's
    # state (which may hold only the trials run since) is restored.
    earlier = ended_trials(out / "epochs.csv" if args.resume else None)
    try:
        grid = build_grid(preset, trial_gpu(float(preset["gpu"])))
        if not grid:
            print("sweep: error: the grid is empty (no model, size, fraction or seed)", file=sys.stderr)
            return 2
        done = set(earlier["trial_id"])
        todo = [spec for spec in grid if spec["name"] not in done]  # trials that ended are not run again
        if restore:
            print(f"sweep {name}: continuing Ray's experiment at {out}", flush=True)
        else:
            print(f"sweep {name}: {len(todo)} trials -> {out}", flush=True)
        if done and not restore:
            print(f"kept {len(done)} ended trials from {out / 'epochs.csv'}; the others run", flush=True)
        elif args.resume and not restore:
            print(f"nothing to resume at {out}; starting the sweep", flush=True)
        grid = grid if restore else todo
        latest = earlier
        if grid or restore:
            latest = collect(make_tuner(preset, grid, storage, name, restore).fit())
    finally:
        ray.shutdown()
    epochs = merge_runs(earlier, latest)
    out.mkdir(parents=True, exist_ok=True)
    summary = write_outputs(out, epochs, preset)
    print(json.dumps({k: summary[k] for k in ("trials", "status", "errors", "best_per_model")}, indent=2))
    print(f"wrote {out}/epochs.csv, trials.csv, epochs.parquet, results.json, sweep_valid_ndcg.png")
    unfinished = summary["status"].get("UNFINISHED", 0)
    if unfinished:
        print(f"sweep interrupted: {unfinished} of {summary['trials']} trials unfinished; --resume continues")
        return 130
    return 0 if summary["status"].get("ERROR", 0) < summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
