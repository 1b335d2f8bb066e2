"""Scaling-law fitting: L(x) = E + A/x^alpha and L(N, D) = E + A/N^alpha + B/D^beta.

Both laws are fitted the Chinchilla "approach 3" way (Hoffmann et al. 2022, with the fixes of
Besiroglu et al. 2024): in log space, ``log L = LSE(e, a_1 - alpha_1 log x_1, ..., a_k - alpha_k log x_k)``
with ``E = exp(e)``, ``A_j = exp(a_j)``; a Huber loss (delta = 1e-3) on the log residuals; L-BFGS from a
grid of starts, keeping the best; an explicit convergence check; percentile bootstrap intervals.

The one-variable law is the k = 1 case and Chinchilla the k = 2 case of the same log-sum-exp model, so
they share one objective, one start grid and one multistart optimiser.

Implementation choices (the numbers are what a reader of the fits needs to know):

* The objective is ``mean(huber_delta(r)) / delta``: the same minimiser as Chinchilla's summed Huber
  loss, but of order ``mean |r|`` so that optimiser tolerances mean something.
* Internally each ``log x_j`` is centred on its mean (``a_j' = a_j - alpha_j * mean(log x_j)``), which
  removes the strong a/alpha correlation that makes the raw problem badly conditioned. Results and
  starts are always given in the natural parameters.
* Starts are data-adaptive rather than Chinchilla's fixed grid (which assumes N ~ 1e8):
  ``E`` at a fraction of the smallest loss, every exponent from a grid, and each ``A_j`` so that its
  term is a fraction of the median loss at the (geometric) centre of the data.
* L-BFGS-B runs with loose bounds (E and each term >= ~1e-5 of the smallest loss, exponents in
  [0, 5]); a fit that ends on one is reported as not converged (that parameter is not identified).
* Converged means: the best run stopped at a (projected) gradient ~0, on no bound, and the best
  ``N_AGREE`` runs agree in objective and parameters. Bootstrap refits start from the full-data
  optimum plus two grid points, so that the same check applies to each of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController  # installed with scikit-learn, a RecBole dependency

HUBER_DELTA = 1e-3
# Start grid: E as a fraction of min(y); exponents; each power-law term as a fraction of median(y).
# That is 12 starts for a power law and 48 for Chinchilla; pass ``starts=`` for a denser grid.
E_FRACTIONS = (0.1, 0.5, 0.9)
EXPONENTS = (0.1, 0.3, 0.7, 1.5)
TERM_FRACTIONS = (0.3,)
# Bootstrap refits start from the full-data optimum plus these 2 grid points (E is the least
# identified parameter), enough for the N_AGREE = 3 agreement check at a fraction of the full grid's cost.
BOOTSTRAP_GRID = {"e_fractions": (0.2, 0.8), "exponents": (0.5,), "term_fractions": (0.3,)}
# Bounds on the centred internal parameters: E, and each term at the centre of the data, at least
# exp(-LOG_FLOOR) * min(y), i.e. effectively zero; exponents in [0, MAX_EXPONENT]. A parameter that
# ends on a bound is reported as not identified, instead of L-BFGS drifting towards -inf for hundreds
# of iterations (which is what an unbounded fit does when the data do not pin, e.g., E down).
LOG_FLOOR = 12.0
MAX_EXPONENT = 5.0
BOUND_TOL = 1e-6
# Convergence criteria (on the centred internal parameters and the scaled objective).
GRAD_TOL = 1e-4
N_AGREE = 3
OBJECTIVE_RTOL = 1e-3
OBJECTIVE_ATOL = 1e-9  # the scaled objective is ~ mean |log residual|; this is exact-fit level
PARAM_ATOL = 1e-2

# L-BFGS-B's tiny dense linear algebra goes through OpenBLAS, whose worker threads make these
# millisecond fits ~25x slower when the CPU is shared (e.g. with a training run): fit single-threaded.
_BLAS = ThreadpoolController()

POWER_LAW_PARAMS = ("E", "A", "alpha")
CHINCHILLA_PARAMS = ("E", "A", "alpha", "B", "beta")


@dataclass
class FitResult:
    """A fitted law. ``theta`` holds the log-space parameters (e, a_1, alpha_1, ...)."""

    law: str  # "power_law" (L = E + A/x^alpha) or "chinchilla" (L = E + A/N^alpha + B/D^beta)
    params: dict[str, float]
    theta: np.ndarray
    objective: float
    grad_norm: float
    converged: bool
    message: str
    n_points: int
    n_starts: int

    def to_dict(self) -> dict:
        """JSON-ready summary (without the raw parameter vector)."""
        return {k: v for k, v in asdict(self).items() if k != "theta"}


@dataclass
class BootstrapResult:
    """Percentile intervals from refitting resampled points."""

    level: float
    ci: dict[str, tuple[float, float]]
    samples: dict[str, np.ndarray] = field(repr=False)
    n_resamples: int
    n_failed: int  # resamples that could not be fitted (e.g. too few distinct sizes drawn)
    n_not_converged: int  # resamples whose refit failed the convergence check (kept in the CI)

    def to_dict(self) -> dict:
        summary = {k: v for k, v in asdict(self).items() if k != "samples"}
        return {**summary, "ci": {k: list(v) for k, v in self.ci.items()}}


@dataclass
class HoldoutResult:
    """Fit on the smaller sizes, predict the largest ones."""

    train_sizes: list[float]
    test_sizes: list[float]
    predicted: np.ndarray
    observed: np.ndarray
    rel_error: np.ndarray  # (predicted - observed) / observed, per held-out point
    fit: FitResult

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.rel_error)))

    def to_dict(self) -> dict:
        arrays = {k: getattr(self, k).tolist() for k in ("predicted", "observed", "rel_error")}
        return {
            "train_sizes": self.train_sizes,
            "test_sizes": self.test_sizes,
            **arrays,
            "mean_abs_rel_error": self.mean_abs_rel_error,
            "mean_rel_error": float(np.mean(self.rel_error)),
            "fit_converged": self.fit.converged,
        }


# --- the shared log-sum-exp model -------------------------------------------------------------


def _log_prediction(theta: np.ndarray, logx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log L for each row of ``logx`` (n, k) and the softmax weight of each LSE term (n, k+1)."""
    terms = np.empty((len(logx), logx.shape[1] + 1))
    terms[:, 0] = theta[0]
    terms[:, 1:] = theta[1::2] - logx * theta[2::2]
    # Plain numpy log-sum-exp: scipy.special's array-API dispatch costs more than the maths here.
    top = terms.max(axis=1)
    expd = np.exp(terms - top[:, None])
    total = expd.sum(axis=1)
    return top + np.log(total), expd / total[:, None]


def _objective(theta: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float):
    """Scaled Huber loss of the log residuals, ``mean(huber_delta(r)) / delta``, and its gradient."""
    pred, weights = _log_prediction(theta, logx)
    r = pred - logy
    abs_r = np.abs(r)
    q = np.minimum(abs_r, delta)  # huber_delta(r) = q (|r| - q/2), huber_delta'(r) = sign(r) q
    scale = delta * len(r)
    loss = q @ (abs_r - 0.5 * q) / scale
    dw = weights * (np.copysign(q, r) / scale)[:, None]
    grad = np.empty_like(theta)
    grad[0] = dw[:, 0].sum()
    grad[1::2] = dw[:, 1:].sum(axis=0)
    grad[2::2] = -(dw[:, 1:] * logx).sum(axis=0)
    return loss, grad


def _shift(theta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``a_j += alpha_j * centre_j``: natural -> centred parameters at ``-mean(log x)``, back at ``+mean``."""
    out = theta.copy()
    out[1::2] = theta[1::2] + theta[2::2] * centre
    return out


def start_grid(
    logx: np.ndarray,
    logy: np.ndarray,
    e_fractions: Sequence[float] = E_FRACTIONS,
    exponents: Sequence[float] = EXPONENTS,
    term_fractions: Sequence[float] = TERM_FRACTIONS,
) -> np.ndarray:
    """Grid of natural log-space starts (e, a_1, alpha_1, ...) adapted to the data (see module doc)."""
    centre = logx.mean(axis=0)
    log_min, log_median = logy.min(), np.median(logy)
    per_term = list(itertools.product(term_fractions, exponents))
    starts = []
    for f_e in e_fractions:
        for combo in itertools.product(per_term, repeat=logx.shape[1]):
            theta = [np.log(f_e) + log_min]
            for c, (f_term, alpha) in zip(centre, combo, strict=True):
                # a such that A / x^alpha = f_term * median(y) at x = exp(c)
                theta += [np.log(f_term) + log_median + alpha * c, alpha]
            starts.append(theta)
    return np.array(starts)


def _fit_lse(
    law: str,
    names: tuple[str, ...],
    logx: np.ndarray,
    logy: np.ndarray,
    starts: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
    maxiter: int = 2000,
) -> FitResult:
    """Multistart L-BFGS on the log-sum-exp model; returns the best start with a convergence verdict.

    ``starts``: natural log-space starts, one row each (default :func:`start_grid`); ``delta``: the
    Huber loss's; ``maxiter``: L-BFGS iterations per start.
    """
    if starts is None:
        starts = start_grid(logx, logy)
    centre = logx.mean(axis=0)
    logx_c = logx - centre
    lower = np.r_[logy.min() - LOG_FLOOR, np.tile([logy.min() - LOG_FLOOR, 0.0], len(centre))]
    upper = np.r_[np.inf, np.tile([np.inf, MAX_EXPONENT], len(centre))]
    runs = []
    with _BLAS.limit(limits=1, user_api="blas"):
        for start in np.atleast_2d(starts):
            res = minimize(
                _objective,
                np.clip(_shift(np.asarray(start, dtype=float), -centre), lower, upper),
                args=(logx_c, logy, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=list(zip(lower, upper, strict=True)),
                options={"maxiter": maxiter, "ftol": 1e-14, "gtol": 1e-10},
            )
            if np.isfinite(res.fun):
                runs.append(res)
    if not runs:
        raise RuntimeError(f"{law}: every start produced a non-finite objective")
    runs.sort(key=lambda r: r.fun)
    best = runs[0]
    at_lower, at_upper = best.x <= lower + BOUND_TOL, best.x >= upper - BOUND_TOL
    # projected gradient: a component pushing against an active bound is not a failure to converge
    grad = np.where((at_lower & (best.jac > 0)) | (at_upper & (best.jac < 0)), 0.0, best.jac)
    grad_norm = float(np.max(np.abs(grad)))
    on_bound = [
        f"{name} on its {'lower bound (~0)' if lo else 'upper bound'}"
        for name, lo, hi in zip(names, at_lower, at_upper, strict=True)
        if lo or hi
    ]
    converged, message = _convergence_verdict(runs, grad_norm, on_bound)
    theta = _shift(best.x, centre)
    values = np.exp(theta)
    values[2::2] = theta[2::2]  # exponents are not exponentiated
    return FitResult(
        law=law,
        params=dict(zip(names, map(float, values), strict=True)),
        theta=theta,
        objective=float(best.fun),
        grad_norm=grad_norm,
        converged=converged,
        message=message,
        n_points=len(logy),
        n_starts=len(np.atleast_2d(starts)),
    )


def _convergence_verdict(runs: list, grad_norm: float, on_bound: list[str]) -> tuple[bool, str]:
    """Converged = the best run succeeded, its (projected) gradient is ~0, no parameter sits on a
    bound, and the best few runs agree."""
    best = runs[0]
    problems = [f"{b}: not identified by these data" for b in on_bound]
    # L-BFGS-B status 2 is a line-search stop; on Huber's kinks it happens at the optimum, so it
    # counts as success when the gradient there is ~0 (checked next).
    if not (best.success or (best.status == 2 and grad_norm <= GRAD_TOL)):
        problems.append(f"optimizer did not report success ({best.message})")
    if grad_norm > GRAD_TOL:
        problems.append(f"gradient max-norm {grad_norm:.2e} > {GRAD_TOL:.0e}")
    top = runs[:N_AGREE]
    if len(top) < N_AGREE:
        problems.append(f"only {len(top)} start(s), cannot check that the best {N_AGREE} agree")
    else:
        obj_spread = max(r.fun for r in top) - best.fun
        param_spread = max(np.max(np.abs(r.x - best.x)) for r in top)
        if obj_spread > OBJECTIVE_RTOL * best.fun + OBJECTIVE_ATOL:
            problems.append(f"best {N_AGREE} starts differ in objective by {obj_spread:.2e}")
        if param_spread > PARAM_ATOL:
            problems.append(f"best {N_AGREE} starts differ in parameters by up to {param_spread:.2e}")
    if problems:
        return False, "; ".join(problems)
    return True, f"converged (grad {grad_norm:.1e}, best {N_AGREE} starts agree)"


# --- public fitting API -----------------------------------------------------------------------


def _positive(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0")
    return arr


def fit_power_law(x: Sequence[float], y: Sequence[float], **options) -> FitResult:
    """Fit ``y = E + A / x**alpha`` (e.g. L(N) or L(C)); ``options``: those of :func:`_fit_lse`.

    ``starts``: optional (m, 3) array of natural log-space starts (e, a, alpha); default ``start_grid``.
    Raises ValueError with fewer than 3 distinct x (three parameters cannot be identified from fewer).
    """
    x_arr, y_arr = _positive("x", x), _positive("y", y)
    if len(x_arr) != len(y_arr):
        raise ValueError(f"x and y differ in length ({len(x_arr)} vs {len(y_arr)})")
    if len(np.unique(x_arr)) < 3:
        raise ValueError(f"power-law fit needs >= 3 distinct sizes, got {len(np.unique(x_arr))}")
    logx = np.log(x_arr)[:, None]
    return _fit_lse("power_law", POWER_LAW_PARAMS, logx, np.log(y_arr), **options)


def fit_chinchilla(N: Sequence[float], D: Sequence[float], y: Sequence[float], **options) -> FitResult:
    """Fit ``y = E + A / N**alpha + B / D**beta`` (Chinchilla approach 3); ``options``: as :func:`_fit_lse`.

    ``starts``: optional (m, 5) array of natural log-space starts (e, a, alpha, b, beta).
    Raises ValueError with fewer than 5 points or fewer than 3 distinct N or D values.
    """
    n_arr, d_arr, y_arr = _positive("N", N), _positive("D", D), _positive("y", y)
    if not len(n_arr) == len(d_arr) == len(y_arr):
        raise ValueError("N, D and y differ in length")
    if len(y_arr) < 5:
        raise ValueError(f"Chinchilla fit needs >= 5 points, got {len(y_arr)}")
    if len(np.unique(n_arr)) < 3 or len(np.unique(d_arr)) < 3:
        # with two values of N (or D) its term is one step, which cannot fix both A and alpha
        raise ValueError(
            f"Chinchilla fit needs >= 3 distinct N and >= 3 distinct D, "
            f"got {len(np.unique(n_arr))} and {len(np.unique(d_arr))}"
        )
    logx = np.log(np.column_stack([n_arr, d_arr]))
    return _fit_lse("chinchilla", CHINCHILLA_PARAMS, logx, np.log(y_arr), **options)


def fit_law(
    columns: Sequence[Sequence[float]], y: Sequence[float], starts: np.ndarray | None = None
) -> FitResult:
    """``[x]`` fits a power law (``fit_power_law``), ``[N, D]`` fits Chinchilla (``fit_chinchilla``)."""
    if len(columns) == 2:
        return fit_chinchilla(*columns, y, starts=starts)
    return fit_power_law(*columns, y, starts=starts)


def predict(fit: FitResult, N: Sequence[float] | float, D: Sequence[float] | float | None = None):
    """Predicted loss at ``N`` (and ``D`` for a Chinchilla fit)."""
    p = fit.params
    n_arr = np.asarray(N, dtype=float)
    out = p["E"] + p["A"] / n_arr ** p["alpha"]
    if fit.law == "chinchilla":
        if D is None:
            raise ValueError("a Chinchilla fit needs D to predict")
        out = out + p["B"] / np.asarray(D, dtype=float) ** p["beta"]
    return out


def bootstrap(
    fit: FitResult,
    columns: Sequence[Sequence[float]],
    y: Sequence[float],
    *,
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int | None = 0,
) -> BootstrapResult:
    """Percentile bootstrap: resample the points with replacement, refit, take quantiles.

    ``columns`` are the fit's inputs (``[x]`` for a power law, ``[N, D]`` for Chinchilla). Each refit
    starts from the full-data optimum plus a coarse grid (``BOOTSTRAP_GRID``). Resamples that cannot
    be fitted (too few distinct sizes drawn) are skipped and counted.
    """
    cols = [np.asarray(c, dtype=float) for c in columns]
    y_arr = np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in fit.params}
    n_failed = n_not_converged = 0
    for _ in range(n_resamples):
        idx = rng.integers(0, len(y_arr), len(y_arr))
        logx = np.log(np.column_stack([c[idx] for c in cols]))
        starts = np.vstack([fit.theta, start_grid(logx, np.log(y_arr[idx]), **BOOTSTRAP_GRID)])
        try:
            refit = fit_law([c[idx] for c in cols], y_arr[idx], starts)
        except ValueError:
            n_failed += 1
            continue
        n_not_converged += not refit.converged
        for name, value in refit.params.items():
            samples[name].append(value)
    if n_failed == n_resamples:
        raise ValueError("no bootstrap resample could be fitted")
    tail = 100 * (1 - level) / 2
    arrays = {name: np.array(v) for name, v in samples.items()}
    ci = {name: tuple(float(q) for q in np.percentile(v, [tail, 100 - tail])) for name, v in arrays.items()}
    return BootstrapResult(level, ci, arrays, n_resamples, n_failed, n_not_converged)


def holdout_validation(
    columns: Sequence[Sequence[float]], y: Sequence[float], *, holdout: int = 1
) -> HoldoutResult:
    """Fit on all but the ``holdout`` largest distinct sizes (first column), predict those points.

    One column fits ``E + A/x^alpha``, two columns ``[N, D]`` fit Chinchilla. Raises ValueError when
    the remaining sizes are too few for the fit.
    """
    cols = [np.asarray(c, dtype=float) for c in columns]
    y_arr = np.asarray(y, dtype=float)
    sizes = np.unique(cols[0])
    if holdout < 1 or holdout >= len(sizes):
        raise ValueError(f"holdout must be in [1, {len(sizes) - 1}] for {len(sizes)} distinct sizes")
    cut = sizes[-holdout]
    train, test = cols[0] < cut, cols[0] >= cut
    fit = fit_law([c[train] for c in cols], y_arr[train])
    predicted = predict(fit, *[c[test] for c in cols])
    observed = y_arr[test]
    return HoldoutResult(
        train_sizes=sizes[sizes < cut].tolist(),
        test_sizes=sizes[sizes >= cut].tolist(),
        predicted=predicted,
        observed=observed,
        rel_error=(predicted - observed) / observed,
        fit=fit,
    )


# --- compute-optimal frontier -----------------------------------------------------------------


@dataclass
class Frontier:
    """Compute-optimal points: for each budget C, the best N, the implied D, and the loss."""

    compute: np.ndarray
    n_opt: np.ndarray
    d_opt: np.ndarray
    loss: np.ndarray

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("compute", "n_opt", "d_opt", "loss")}


def compute_optimal_frontier(fit: FitResult, budgets: Sequence[float], k: float) -> Frontier:
    """Fitted frontier of a Chinchilla fit under C = k N D.

    Minimising ``E + A N^-alpha + B (k N / C)^beta`` over N gives the closed form
    ``N_opt = (alpha A / (beta B))^(1/(alpha+beta)) * (C/k)^(beta/(alpha+beta))``, ``D_opt = C/(k N_opt)``.
    """
    if fit.law != "chinchilla":
        raise ValueError("the fitted frontier needs a Chinchilla L(N, D) fit")
    p = fit.params
    if p["alpha"] <= 0 or p["beta"] <= 0:
        raise ValueError("the fitted frontier needs positive exponents alpha and beta")
    c = np.asarray(budgets, dtype=float)
    s = p["alpha"] + p["beta"]
    n_opt = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s) * (c / k) ** (p["beta"] / s)
    d_opt = c / (k * n_opt)
    return Frontier(c, n_opt, d_opt, predict(fit, n_opt, d_opt))


def empirical_frontier(
    compute: Sequence[float], loss: Sequence[float], n: Sequence[float], d: Sequence[float]
) -> Frontier:
    """Lower envelope of measured (C, loss) points: the points that beat every cheaper point.

    Reading it left to right tells which model size (``n_opt``, with its tokens ``d_opt``) is best at
    each budget.
    """
    c, l_arr, n_arr, d_arr = (np.asarray(v, dtype=float) for v in (compute, loss, n, d))
    order = np.lexsort((l_arr, c))
    sorted_loss = l_arr[order]
    keep = order[sorted_loss < np.minimum.accumulate(np.r_[np.inf, sorted_loss])[:-1]]  # beats all before
    return Frontier(c[keep], n_arr[keep], d_arr[keep], l_arr[keep])
