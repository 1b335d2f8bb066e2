"""Fit scaling laws to a sweep's results table, validate them, plot them and summarise them.

    python benchmarks/scaling.py --results results/sweep.parquet [--out DIR] [--loss-col valid_loss]
                                 [--bootstrap 200] [--holdout 1] [--seed 0]

Per model, on the (trial, epoch) rows (``EPOCH_COLUMNS``): ``L(N) = E + A/N^alpha`` on each trial's
best epoch at the model's largest ``data_fraction`` (mixing data sizes would fold the D dependence into
the scatter); ``L(N, D) = E + A/N^alpha + B/D^beta`` on the best epochs of all trials;
``L(C) = E + A/C^alpha`` on the lower envelope of all points in (``flops``, loss), the law of the
compute-efficient frontier, not of any one model. Each fit gets bootstrap intervals, a convergence
verdict and (L(N), L(N, D)) a holdout check. The compute-optimal frontier is reported as measured (the
envelope) and from L(N, D) with ``C = k N D``, k the median ``flops / (N * train_tokens)`` (not 6:
``flops`` also counts embeddings and the scoring head). docs/sweeps-and-scaling.md has the details.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from recbole_srt.analysis import EPOCH_COLUMNS, json_ready
from recbole_srt.analysis.scaling_law import (
    BootstrapResult,
    FitResult,
    bootstrap,
    compute_optimal_frontier,
    empirical_frontier,
    fit_law,
    holdout_validation,
    predict,
)  # fmt: skip

N_COL, D_COL, C_COL = "params_non_embedding", "train_tokens", "flops"
QUALITY_COL, TEST_QUALITY_COL = "valid_ndcg@10", "test_ndcg@10"
MODEL_ORDER = ("SRT", "SASRec", "BERT4Rec")
LAWS = ("L(N)", "L(N,D)", "L(C)")
LAW_FORMULAS = {
    "L(N)": "E + A/N^alpha",
    "L(N,D)": "E + A/N^alpha + B/D^beta",
    "L(C)": "E + A/C^alpha (envelope)",
}
PARAM_LABELS = ("E", "A", "alpha", "B", "beta")
FRONTIER_BUDGETS = 20


# --- reading the table --------------------------------------------------------------------------


def load_results(path: Path) -> pd.DataFrame:
    """Read the sweep table (``.csv`` or ``.parquet``/``.pq``) and check its columns."""
    read = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}.get(path.suffix.lower())
    if read is None:
        raise ValueError(f"{path}: expected a .csv or .parquet file")
    df = read(path)
    missing = [c for c in EPOCH_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    numeric = [c for c in EPOCH_COLUMNS if c not in ("trial_id", "model", "status", "is_best_epoch")]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")  # pd.NA / blanks -> NaN
    df["is_best_epoch"] = df["is_best_epoch"].astype(str).str.lower().isin(("true", "1"))
    df["trial_id"] = df["trial_id"].astype(str)
    return df


def choose_loss_col(df: pd.DataFrame, requested: str | None) -> str:
    """``requested`` if given, else ``valid_loss``, falling back to ``train_loss`` if that is all NaN."""
    if requested is not None:
        if requested not in df.columns:
            raise ValueError(f"--loss-col {requested!r} is not a column of the table")
        return requested
    return "valid_loss" if df["valid_loss"].notna().any() else "train_loss"


def best_epochs(df: pd.DataFrame, loss_col: str) -> pd.DataFrame:
    """Each trial's row with the lowest loss (the point used for L(N) and L(N, D))."""
    usable = df[np.isfinite(df[loss_col]) & (df[loss_col] > 0)]
    return usable.loc[usable.groupby("trial_id")[loss_col].idxmin()]


def quality_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial's reported best epoch (``is_best_epoch``), else its row with the best valid NDCG@10."""
    flagged = df[df["is_best_epoch"]].drop_duplicates("trial_id")
    rest = df[~df["trial_id"].isin(flagged["trial_id"]) & df[QUALITY_COL].notna()]
    fallback = rest.loc[rest.groupby("trial_id")[QUALITY_COL].idxmax()]
    return pd.concat([flagged, fallback])


# --- fitting ------------------------------------------------------------------------------------


def _fit_one(columns: list[np.ndarray], y: np.ndarray, args: argparse.Namespace, with_holdout: bool) -> dict:
    """Fit, bootstrap and (optionally) hold out; raises ValueError when the fit itself is impossible."""
    fit = fit_law(columns, y)
    out: dict = {"fit": fit, "bootstrap": None, "holdout": None, "notes": []}
    if args.bootstrap > 0:
        try:
            out["bootstrap"] = bootstrap(fit, columns, y, n_resamples=args.bootstrap, seed=args.seed)
        except ValueError as err:
            out["notes"].append(f"bootstrap skipped: {err}")
    if with_holdout:
        try:
            out["holdout"] = holdout_validation(columns, y, holdout=args.holdout)
        except (ValueError, RuntimeError) as err:
            out["notes"].append(f"holdout skipped: {err}")
    return out


def analyse_model(df: pd.DataFrame, loss_col: str, args: argparse.Namespace) -> dict:
    """All fits and frontiers for one model's rows (ERROR trials already removed)."""
    best = best_epochs(df, loss_col)
    full = best[best["data_fraction"] == best["data_fraction"].max()]
    quality = quality_rows(df)
    quality = quality[quality["data_fraction"] == quality["data_fraction"].max()]
    points = df[(df[loss_col] > 0) & (df[C_COL] > 0) & (df[N_COL] > 0) & (df[D_COL] > 0)]
    envelope = empirical_frontier(points[C_COL], points[loss_col], points[N_COL], points[D_COL])
    n_best, d_best, y_best = (best[c].to_numpy(float) for c in (N_COL, D_COL, loss_col))
    inputs = {
        "L(N)": ([full[N_COL].to_numpy(float)], full[loss_col].to_numpy(float), True),
        "L(N,D)": ([n_best, d_best], y_best, True),
        "L(C)": ([envelope.compute], envelope.loss, False),
    }
    result: dict = {"best": best, "full": full, "quality": quality, "points": points, "envelope": envelope,
                    "fits": {}, "skipped": {}}  # fmt: skip
    for law, (columns, y, with_holdout) in inputs.items():
        try:
            result["fits"][law] = _fit_one(columns, y, args, with_holdout)
        except (ValueError, RuntimeError) as err:
            result["skipped"][law] = str(err)

    ratio = points[C_COL] / (points[N_COL] * points[D_COL])
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    result["k"] = float(ratio.median())  # NaN without a usable row
    result["k_range"] = (float(ratio.min()), float(ratio.max()))
    result["frontier"] = None
    if "L(N,D)" not in result["fits"]:
        result["frontier_skipped"] = "no L(N,D) fit"
    elif not math.isfinite(result["k"]):
        result["frontier_skipped"] = "no row with positive flops, params and tokens to estimate k"
    else:
        budgets = np.geomspace(points[C_COL].min(), points[C_COL].max(), FRONTIER_BUDGETS)
        try:
            result["frontier"] = compute_optimal_frontier(
                result["fits"]["L(N,D)"]["fit"], budgets, result["k"]
            )
        except ValueError as err:
            result["frontier_skipped"] = str(err)
    return result


# --- reporting ----------------------------------------------------------------------------------


def fits_json(analyses: dict[str, dict], meta: dict) -> dict:
    models = {}
    for model, a in analyses.items():
        fits = {}
        for law, f in a["fits"].items():
            fits[law] = {
                "formula": LAW_FORMULAS[law],
                **f["fit"].to_dict(),
                "bootstrap": f["bootstrap"].to_dict() if f["bootstrap"] else None,
                "holdout": f["holdout"].to_dict() if f["holdout"] else None,
                "notes": f["notes"],
            }
        models[model] = {
            "n_trials": int(a["best"]["trial_id"].nunique()),
            "sizes": sorted(a["best"][N_COL].unique().tolist()),
            "fits": fits,
            "skipped": a["skipped"],
            "flops_per_param_token": {"median": a["k"], "min": a["k_range"][0], "max": a["k_range"][1]},
            "frontier_empirical": a["envelope"].to_dict(),
            "frontier_fitted": a["frontier"].to_dict() if a["frontier"] else None,
            "frontier_fitted_skipped": a.get("frontier_skipped"),
        }
    return json_ready({**meta, "models": models})


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _param_cell(fit: FitResult, boot: BootstrapResult | None, name: str) -> str:
    if name not in fit.params:
        return ""
    cell = _fmt(fit.params[name])
    if boot is not None:
        lo, hi = boot.ci[name]
        cell += f" [{_fmt(lo)}, {_fmt(hi)}]"
    return cell


def summary_markdown(analyses: dict[str, dict], meta: dict) -> str:
    """The summary table plus notes on skipped fits, unconverged fits and the frontier."""
    header = ["model", "law", "points", *PARAM_LABELS, "converged", "holdout \\|rel. err\\|", "holdout bias"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for model, a in analyses.items():
        for law in LAWS:
            if law in a["skipped"]:
                notes.append(f"- {model} {law}: skipped ({a['skipped'][law]})")
                continue
            f = a["fits"][law]
            fit, boot, hold = f["fit"], f["bootstrap"], f["holdout"]
            cells = [model, f"{law} = {LAW_FORMULAS[law]}", str(fit.n_points)]
            cells += [_param_cell(fit, boot, name) for name in PARAM_LABELS]
            cells.append("yes" if fit.converged else "**no**")
            if hold is None:
                cells += ["n/a", "n/a"]
            else:
                cells += [f"{hold.mean_abs_rel_error:.1%}", f"{np.mean(hold.rel_error):+.1%}"]
            lines.append("| " + " | ".join(cells) + " |")
            if not fit.converged:
                notes.append(f"- {model} {law}: not converged: {fit.message}")
            if fit.n_points <= len(fit.params):
                notes.append(
                    f"- {model} {law}: {fit.n_points} points for {len(fit.params)} parameters: the law "
                    "interpolates them, so its intervals and holdout say nothing"
                )
            if boot is not None and (boot.n_failed or boot.n_not_converged):
                notes.append(
                    f"- {model} {law}: bootstrap {boot.n_resamples} resamples, {boot.n_failed} unfittable, "
                    f"{boot.n_not_converged} refits not converged"
                )
            notes += [f"- {model} {law}: {note}" for note in f["notes"]]
    out = [
        f"# Scaling-law fits: `{meta['results']}`",
        "",
        f"Loss: `{meta['loss_col']}`. Trials used: {meta['n_trials']}; excluded (status ERROR): "
        f"{meta['excluded_error_trials']}. Brackets: {meta['ci_level']:.0%} percentile bootstrap "
        f"intervals ({meta['bootstrap_resamples']} resamples). Holdout: fit without the largest "
        f"{meta['holdout']} size(s), predict them; bias = mean (pred - obs)/obs.",
        "",
        *lines,
    ]
    if notes:
        out += ["", "Notes:", "", *notes]
    out += ["", "## Compute-optimal frontier", ""]
    for model, a in analyses.items():
        out.append(
            f"- {model}, measured envelope (size best at each budget): {_envelope_segments(a['envelope'])}"
        )
        if a["frontier"] is not None:
            fr = a["frontier"]
            idx = np.unique(np.linspace(0, len(fr.compute) - 1, 4).round().astype(int))
            points = ", ".join(
                f"C={_fmt(fr.compute[i])}: N={_fmt(fr.n_opt[i])}, L={_fmt(fr.loss[i])}" for i in idx
            )
            caveat = "" if a["fits"]["L(N,D)"]["fit"].converged else " (L(N,D) fit NOT converged)"
            out.append(f"- {model}, from L(N,D) with C = {_fmt(a['k'])}·N·D{caveat}: {points}")
        else:
            out.append(f"- {model}, from L(N,D): skipped ({a.get('frontier_skipped')})")
    return "\n".join(out) + "\n"


def _envelope_segments(envelope) -> str:
    """'N=1e4 up to C=3e9, N=5e4 up to C=2e10, ...' from the envelope's run of best sizes."""
    if len(envelope.compute) == 0:
        return "no points"
    segments = []
    for n, c in zip(envelope.n_opt, envelope.compute, strict=True):
        if segments and segments[-1][0] == n:
            segments[-1][1] = c
        else:
            segments.append([n, c])
    return ", ".join(f"N={_fmt(n)} up to C={_fmt(c)}" for n, c in segments)


# --- plots --------------------------------------------------------------------------------------


def _curve(fit: FitResult, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grid = np.geomspace(x.min(), x.max(), 100)
    return grid, predict(fit, grid)


def _finish(fig, ax_list, path: Path) -> None:
    for ax in ax_list:
        corners = ax.dataLim.get_points()
        if np.all(np.isfinite(corners)) and np.all(corners[0] > 0):
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:  # nothing positive to put on log axes (e.g. every fit skipped, no metric logged)
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    # fixed margins (in inches): tight_layout would draw every figure twice, doubling plotting time
    width = fig.get_figwidth()
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.15 / width, bottom=0.12, top=0.92, wspace=0.35)
    fig.savefig(path, dpi=120)


def plot_loss_vs_params(analyses: dict[str, dict], loss_col: str, path: Path) -> None:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for i, (model, a) in enumerate(analyses.items()):
        color = f"C{i}"
        best = a["full"]
        ax.scatter(best[N_COL], best[loss_col], color=color, s=18, label=f"{model} (best epoch, full data)")
        if "L(N)" in a["fits"]:
            fit = a["fits"]["L(N)"]["fit"]
            label = f"{model} fit: alpha={fit.params['alpha']:.3g}"
            ax.plot(*_curve(fit, best[N_COL].to_numpy(float)), color=color, label=label)
    ax.set(xlabel="non-embedding parameters N", ylabel=loss_col, title="Loss vs model size")
    _finish(fig, [ax], path)


def plot_ndcg_vs_params(analyses: dict[str, dict], path: Path) -> None:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for i, (model, a) in enumerate(analyses.items()):
        rows = a["quality"]
        rows = rows[rows[N_COL] > 0]
        valid = rows[rows[QUALITY_COL] > 0]
        test = rows[rows[TEST_QUALITY_COL] > 0]
        ax.scatter(valid[N_COL], valid[QUALITY_COL], color=f"C{i}", s=18, label=f"{model} valid")
        if len(test):
            ax.scatter(test[N_COL], test[TEST_QUALITY_COL], facecolors="none", edgecolors=f"C{i}", s=30,
                       label=f"{model} test")  # fmt: skip
    ax.set(xlabel="non-embedding parameters N", ylabel="NDCG@10", title="NDCG@10 (best epoch) vs model size")
    _finish(fig, [ax], path)


def plot_loss_vs_compute(analyses: dict[str, dict], loss_col: str, path: Path) -> None:
    panels = max(len(analyses), 1)
    fig = Figure(figsize=(6 * panels, 4.5))
    axes = fig.subplots(1, panels, squeeze=False)
    axes = axes[0]
    for ax, (model, a) in zip(axes, analyses.items(), strict=False):
        pts = a["points"]
        if len(pts):
            sizes = pts[N_COL].to_numpy(float)
            norm = LogNorm(sizes.min(), max(sizes.max(), sizes.min() * 1.01))
            sc = ax.scatter(pts[C_COL], pts[loss_col], c=sizes, norm=norm, cmap="viridis", s=10)
            fig.colorbar(sc, ax=ax, label="N")
            env = a["envelope"]
            ax.step(env.compute, env.loss, where="post", color="k", lw=0.8, label="measured envelope")
            ax.scatter(
                env.compute, env.loss, facecolors="none", edgecolors="k", s=40, label="frontier points"
            )
        if "L(C)" in a["fits"]:
            fit = a["fits"]["L(C)"]["fit"]
            label = f"L(C) fit: alpha={fit.params['alpha']:.3g}"
            ax.plot(*_curve(fit, a["envelope"].compute), color="C3", label=label)
        if a["frontier"] is not None:
            fr = a["frontier"]
            ax.plot(fr.compute, fr.loss, "--", color="C1", label="compute-optimal from L(N,D)")
        ax.set(xlabel="training FLOPs C", ylabel=loss_col, title=f"{model}: loss vs compute")
    _finish(fig, axes, path)


def plot_ndcg_vs_compute(analyses: dict[str, dict], path: Path) -> None:
    """Valid NDCG@10 of every epoch of every trial against its cumulative training FLOPs, and each
    model's envelope: the best NDCG@10 reached within a compute budget (the paper's frontier figure)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (model, a) in enumerate(analyses.items()):
        pts = a["points"][a["points"][QUALITY_COL] > 0].sort_values(C_COL)
        if not len(pts):
            continue
        ax.scatter(pts[C_COL], pts[QUALITY_COL], color=f"C{i}", s=6, alpha=0.35)
        envelope = pts[QUALITY_COL].cummax()
        ax.step(pts[C_COL], envelope, where="post", color=f"C{i}", lw=1.5, label=f"{model} envelope")
    ax.set(xscale="log", xlabel="training FLOPs C", ylabel="valid NDCG@10",
           title="NDCG@10 vs training compute (each dot an epoch)")  # fmt: skip
    _finish(fig, [ax], path)


def plot_srt_vs_baselines(analyses: dict[str, dict], loss_col: str, path: Path) -> None:
    """Loss and NDCG@10 per model at equal N: mean over seeds, bars from min to max."""
    fig = Figure(figsize=(11, 4.5))
    ax_loss, ax_ndcg = fig.subplots(1, 2)
    for i, (model, a) in enumerate(analyses.items()):
        for ax, rows, col in ((ax_loss, a["full"], loss_col), (ax_ndcg, a["quality"], QUALITY_COL)):
            rows = rows[(rows[N_COL] > 0) & (rows[col] > 0)]
            if not len(rows):
                continue
            g = rows.groupby(N_COL)[col].agg(["mean", "min", "max"]).reset_index()
            err = [g["mean"] - g["min"], g["max"] - g["mean"]]
            ax.errorbar(
                g[N_COL], g["mean"], yerr=err, marker="o", ms=4, capsize=2, color=f"C{i}", label=model
            )
    ax_loss.set(xlabel="non-embedding parameters N", ylabel=loss_col, title="Best loss at equal N")
    ax_ndcg.set(xlabel="non-embedding parameters N", ylabel="valid NDCG@10", title="NDCG@10 at equal N")
    _finish(fig, [ax_loss, ax_ndcg], path)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="sweep table, .csv or .parquet")
    p.add_argument("--out", type=Path, help="output folder (default: RESULTS_DIR/scaling)")
    p.add_argument("--loss-col", help="loss column to fit (default: valid_loss, else train_loss)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit (0: no CIs)")
    p.add_argument("--holdout", type=int, default=1, help="largest sizes held out for validation")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.out or args.results.parent / "scaling"
    try:
        df = load_results(args.results)
        loss_col = choose_loss_col(df, args.loss_col)
    except (OSError, ValueError) as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    error_trials = sorted(df.loc[df["status"] == "ERROR", "trial_id"].unique())
    df = df[~df["trial_id"].isin(error_trials)]

    models = [m for m in MODEL_ORDER if m in set(df["model"])]
    models += sorted(set(df["model"]) - set(models))
    analyses = {model: analyse_model(df[df["model"] == model], loss_col, args) for model in models}

    meta = {
        "results": str(args.results),
        "loss_col": loss_col,
        "n_rows": len(df),
        "n_trials": int(df["trial_id"].nunique()),
        "excluded_error_trials": len(error_trials),
        "excluded_error_trial_ids": error_trials,
        "bootstrap_resamples": args.bootstrap,
        "ci_level": 0.95,
        "holdout": args.holdout,
        "bootstrap_seed": args.seed,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling_fits.json").write_text(json.dumps(fits_json(analyses, meta), indent=2))
    summary = summary_markdown(analyses, meta)
    (out_dir / "scaling_summary.md").write_text(summary)
    plot_loss_vs_params(analyses, loss_col, out_dir / "loss_vs_params.png")
    plot_ndcg_vs_params(analyses, out_dir / "ndcg_vs_params.png")
    plot_loss_vs_compute(analyses, loss_col, out_dir / "loss_vs_compute.png")
    plot_ndcg_vs_compute(analyses, out_dir / "ndcg_vs_compute.png")
    plot_srt_vs_baselines(analyses, loss_col, out_dir / "srt_vs_baselines.png")
    print(summary)
    print(f"wrote {out_dir}/scaling_fits.json, scaling_summary.md and 5 PNG plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
