"""Scaling-law fits to a sweep's (N, D, loss) points, with bootstrap intervals.

Approach 2 (Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models"): points that share a compute budget C form an IsoFLOP curve; a parabola of
loss in log N (and another in log D) per budget gives that budget's optimum, and
straight lines through log N_opt(C) and log D_opt(C) give the exponents
N_opt ∝ C^a, D_opt ∝ C^b.

Approach 3: L(N, D) = E + A/N^α + B/D^β, fitted as in Besiroglu et al. 2024
("Chinchilla Scaling: A replication attempt"): minimise the Huber loss (δ = 1e-3)
of log L_pred - log L_obs with log L_pred = LSE(a - α log N, b - β log D, e),
a = log A, b = log B, e = log E, by L-BFGS from a grid of starting points.

Intervals are 95% percentile intervals over bootstrap resamples of the points.
Resampling is stratified by budget, so every replicate keeps every IsoFLOP curve
(a plain resample of 14 points can leave a budget with fewer than 3 distinct sizes,
which has no parabola); each replicate refits approach 3 from the point estimate
only, which is what keeps a fit with intervals to seconds.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from orchestrator.scaling_laws.points import Points
from workloads.errors import UserInputError

HUBER_DELTA = 1e-3
BUDGET_TOLERANCE = 0.05  # D is rounded to whole optimizer steps, so one budget's C varies by a few %
MIN_POINTS_PER_BUDGET = 3  # a parabola needs three sizes
MIN_BUDGETS = 2  # a line through the optima needs two budgets
MIN_POINTS_LAW = 6  # five parameters, and at least one point to spare
CI_LEVEL = 0.95


@dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    def optimal_allocation(self, C):
        """(N_opt, D_opt) minimising the law at C = 6 N D (Hoffmann et al. 2022, eq. 4)."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        a = self.beta / (self.alpha + self.beta)
        N_opt = G * np.power(np.asarray(C, dtype=float) / 6.0, a)
        return N_opt, np.asarray(C, dtype=float) / (6.0 * N_opt)

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) of N_opt ∝ C^a, D_opt ∝ C^b implied by the law."""
        return self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)


# Published fits, for comparison (their N, D, tokenizer and data differ from any sweep's).
CHINCHILLA = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, approach 3
EPOCH = LossLaw(E=1.82, A=482.0, B=2085.4, alpha=0.348, beta=0.366)  # Besiroglu et al. 2024


def group_budgets(C: np.ndarray, tolerance: float = BUDGET_TOLERANCE) -> np.ndarray:
    """A budget label per point: points within `tolerance` (relative) of a budget's smallest C share it."""
    order = np.argsort(C)
    labels = np.empty(len(C), dtype=int)
    label, start = -1, -math.inf
    for i in order:
        if C[i] > start * (1.0 + tolerance):
            label, start = label + 1, C[i]
        labels[i] = label
    return labels


# ---------------------------------------------------------------- approach 2


@dataclass(frozen=True)
class IsoFlopCurve:
    """One budget's parabolas loss = p[0] x^2 + p[1] x + p[2], x = ln N (or ln D), and their minima."""

    C: float  # the median of the budget's points' C
    n_points: int
    parabola_N: tuple[float, float, float]
    parabola_D: tuple[float, float, float]
    N_opt: float
    D_opt: float
    inside: bool  # both minima lie within the sizes the budget sampled


@dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2: per-budget optima and ln N_opt = a ln C + a0, ln D_opt = b ln C + b0."""

    curves: tuple[IsoFlopCurve, ...]
    a: float
    a0: float
    b: float
    b0: float

    def optimal_allocation(self, C):
        C = np.asarray(C, dtype=float)
        return np.exp(self.a * np.log(C) + self.a0), np.exp(self.b * np.log(C) + self.b0)


def _parabola_minimum(x: np.ndarray, y: np.ndarray) -> tuple[tuple[float, float, float], float] | None:
    p = np.polyfit(x, y, 2)
    if not p[0] > 0:  # no curvature upward: the sizes do not bracket an optimum
        return None
    return (float(p[0]), float(p[1]), float(p[2])), float(-p[1] / (2 * p[0]))


def budget_groups(points: Points) -> list[np.ndarray]:
    """Indices of each budget's points, smallest budget first; refuses sweeps approach 2 cannot fit."""
    if len(points) == 0:
        raise UserInputError(f"{points.source}: no points to fit")
    labels = group_budgets(points.C)
    groups = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    for g in groups:
        if len(np.unique(points.N[g])) < MIN_POINTS_PER_BUDGET:
            C = float(np.median(points.C[g]))
            raise UserInputError(
                f"{points.source}: budget C={C:.3g} has {len(np.unique(points.N[g]))} distinct sizes; "
                f"an IsoFLOP parabola needs at least {MIN_POINTS_PER_BUDGET}"
            )
    if len(groups) < MIN_BUDGETS:
        raise UserInputError(
            f"{points.source}: {len(groups)} compute budget(s); fitting N_opt ∝ C^a needs at least {MIN_BUDGETS} "
            f"(points within {BUDGET_TOLERANCE:.0%} of each other's C count as one budget)"
        )
    return groups


def _isoflop_fit(points: Points, groups: list[np.ndarray]) -> IsoFlopFit | None:
    """None when some budget's parabola has no minimum (only allowed in bootstrap replicates)."""
    curves = []
    for g in groups:
        if len(np.unique(points.N[g])) < MIN_POINTS_PER_BUDGET:  # a resample that drew too few sizes
            return None
        lnN, lnD, loss = np.log(points.N[g]), np.log(points.D[g]), points.loss[g]
        fit_N, fit_D = _parabola_minimum(lnN, loss), _parabola_minimum(lnD, loss)
        if fit_N is None or fit_D is None:
            return None
        (pN, xN), (pD, xD) = fit_N, fit_D
        inside = bool(lnN.min() <= xN <= lnN.max() and lnD.min() <= xD <= lnD.max())
        curves.append(
            IsoFlopCurve(float(np.median(points.C[g])), len(g), pN, pD, float(np.exp(xN)), float(np.exp(xD)), inside)
        )
    lnC = np.log([c.C for c in curves])
    a, a0 = np.polyfit(lnC, np.log([c.N_opt for c in curves]), 1)
    b, b0 = np.polyfit(lnC, np.log([c.D_opt for c in curves]), 1)
    return IsoFlopFit(tuple(curves), float(a), float(a0), float(b), float(b0))


def fit_isoflop(points: Points) -> IsoFlopFit:
    """Approach 2 on all points; bad sweeps are refused with one line naming the problem."""
    groups = budget_groups(points)
    fit = _isoflop_fit(points, groups)
    if fit is None:
        flat_budgets = [
            f"C={np.median(points.C[g]):.3g}"
            for g in groups
            if _parabola_minimum(np.log(points.N[g]), points.loss[g]) is None
            or _parabola_minimum(np.log(points.D[g]), points.loss[g]) is None
        ]
        raise UserInputError(
            f"{points.source}: loss does not curve upward in log N (or log D) at budget {', '.join(flat_budgets)}: "
            "no IsoFLOP minimum (sample sizes on both sides of the optimum)"
        )
    return fit


# ---------------------------------------------------------------- approach 3


def _huber_objective(
    theta: np.ndarray, x: np.ndarray, y: np.ndarray, log_loss: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber(log L_pred - log L_obs) and its gradient in theta = (e, a, b, alpha, beta).

    x and y are ln N and ln D centred on their means (see `_centre`).
    """
    e, a, b, alpha, beta = theta
    t = np.stack([a - alpha * x, b - beta * y, np.full_like(x, e)])  # (3, n)
    top = t.max(axis=0)
    w = np.exp(t - top)
    total = w.sum(axis=0)
    r = top + np.log(total) - log_loss  # (n,)
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    dr = np.where(small, r, delta * np.sign(r)) * w / total  # (3, n): dHuber/dt
    grad = np.array([dr[2].sum(), dr[0].sum(), dr[1].sum(), -(dr[0] * x).sum(), -(dr[1] * y).sum()])
    return float(value), grad


# Starting grid after Hoffmann et al.: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}. Every start's objective is evaluated (4500 starts, vectorised: milliseconds);
# L-BFGS runs only from the best 16 (on the synthetic sweeps of the tests the best dozen all reach the
# global optimum, and the rest a local one with E near 3), so a fit takes a fraction of a second.
GRID_ALPHA = np.arange(0.0, 2.01, 0.5)
GRID_E = np.arange(-1.0, 1.01, 0.5)
GRID_AB = np.arange(0.0, 25.1, 5.0)
GRID_RUNS = 16
LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12}  # the objective is ~1e-4: scipy's defaults stop early


def _grid_starts() -> np.ndarray:
    """(k, 5) starts in the uncentred (e, a, b, alpha, beta)."""
    return np.array(list(itertools.product(GRID_E, GRID_AB, GRID_AB, GRID_ALPHA, GRID_ALPHA)))


def _centre(theta: np.ndarray, x_mean: float, y_mean: float) -> np.ndarray:
    """a - alpha ln N = (a - alpha mean ln N) - alpha (ln N - mean): same law, far better conditioned."""
    e, a, b, alpha, beta = np.moveaxis(np.asarray(theta, dtype=float), -1, 0)
    return np.stack([e, a - alpha * x_mean, b - beta * y_mean, alpha, beta], axis=-1)


def _uncentre(theta: np.ndarray, x_mean: float, y_mean: float) -> np.ndarray:
    e, a, b, alpha, beta = theta
    return np.array([e, a + alpha * x_mean, b + beta * y_mean, alpha, beta])


def _grid_objectives(
    starts: np.ndarray, x: np.ndarray, y: np.ndarray, log_loss: np.ndarray, delta: float
) -> np.ndarray:
    e, a, b, alpha, beta = (starts[:, i : i + 1] for i in range(5))
    t1, t2 = a - alpha * x, b - beta * y  # (k, n)
    r = np.logaddexp(np.logaddexp(t1, t2), e) - log_loss
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)


def _law(theta: np.ndarray) -> LossLaw:
    e, a, b, alpha, beta = (float(v) for v in theta)
    return LossLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _theta(law: LossLaw) -> np.ndarray:
    return np.array([math.log(law.E), math.log(law.A), math.log(law.B), law.alpha, law.beta])


def _single_blas_thread(fit):
    """Run `fit` with BLAS on one thread.

    L-BFGS-B's 5x5 linear algebra goes through BLAS; OpenBLAS threads on matrices this
    small only wait for each other, and on a busy machine that made a fit up to 100x slower.
    """

    @functools.wraps(fit)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fit(*args, **kwargs)

    return wrapper


def _fit_law(points: Points, start: LossLaw | None = None, delta: float = HUBER_DELTA) -> LossLaw:
    if len(points) < MIN_POINTS_LAW:
        raise UserInputError(
            f"{points.source}: {len(points)} points; fitting E, A, B, alpha, beta needs at least {MIN_POINTS_LAW}"
        )
    lnN, lnD = np.log(points.N), np.log(points.D)
    x_mean, y_mean = float(lnN.mean()), float(lnD.mean())
    x, y, log_loss = lnN - x_mean, lnD - y_mean, np.log(points.loss)
    if start is not None:
        starts = _centre(_theta(start)[None, :], x_mean, y_mean)
    else:
        starts = _centre(_grid_starts(), x_mean, y_mean)
        starts = starts[np.argsort(_grid_objectives(starts, x, y, log_loss, delta))[:GRID_RUNS]]
    best = None
    for theta0 in starts:
        result = minimize(
            _huber_objective, theta0, args=(x, y, log_loss, delta), jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS
        )
        if np.all(np.isfinite(result.x)) and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        raise UserInputError(
            f"{points.source}: the fit of L = E + A/N^alpha + B/D^beta did not converge from any start"
        )
    return _law(_uncentre(best.x, x_mean, y_mean))


@_single_blas_thread
def fit_law(points: Points, start: LossLaw | None = None, delta: float = HUBER_DELTA) -> LossLaw:
    """Approach 3: L-BFGS from `start` alone when given, else from the best few grid starts."""
    return _fit_law(points, start, delta)


# ---------------------------------------------------------------- both, with intervals


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95% bootstrap interval (None without bootstrap resamples)."""

    value: float
    ci: tuple[float, float] | None

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": None if self.ci is None else list(self.ci)}


def _interval(value: float, samples) -> Estimate:
    if len(samples) == 0:
        return Estimate(float(value), None)
    tail = 100 * (1 - CI_LEVEL) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return Estimate(float(value), (float(lo), float(hi)))


LAW_PARAMETERS = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class SweepFit:
    """Both approaches on one sweep, with every bootstrap refit kept for intervals and bands."""

    points: Points
    law: LossLaw
    isoflop: IsoFlopFit
    law_samples: tuple[LossLaw, ...]
    """Approach 3 refits, one per resample."""
    isoflop_samples: tuple[IsoFlopFit, ...]
    """Approach 2 refits of the resamples in which every budget's parabolas curve upward."""

    def parameters(self) -> dict[str, Estimate]:
        """E, A, B, alpha, beta (approach 3) and a, b (approach 2)."""
        estimates = {
            name: _interval(getattr(self.law, name), [getattr(s, name) for s in self.law_samples])
            for name in LAW_PARAMETERS
        }
        for name in ("a", "b"):
            estimates[name] = _interval(getattr(self.isoflop, name), [getattr(s, name) for s in self.isoflop_samples])
        return estimates

    def predict(self, N, D) -> Estimate:
        """Approach 3's loss at (N, D); the interval is the fitted law's (parameter uncertainty, not trial noise)."""
        return _interval(float(self.law.loss(N, D)), [s.loss(N, D) for s in self.law_samples])

    def allocation(self, C: float) -> tuple[Estimate, Estimate]:
        """Approach 2's (N_opt, D_opt) at budget C."""
        N_opt, D_opt = self.isoflop.optimal_allocation(C)
        samples = np.array([s.optimal_allocation(C) for s in self.isoflop_samples]).reshape(-1, 2)
        return _interval(float(N_opt), samples[:, 0]), _interval(float(D_opt), samples[:, 1])

    def law_allocation(self, C: float) -> tuple[Estimate, Estimate]:
        """Approach 3's compute-optimal (N, D) at C = 6 N D, to compare with approach 2's."""
        N_opt, D_opt = self.law.optimal_allocation(C)
        samples = np.array([s.optimal_allocation(C) for s in self.law_samples]).reshape(-1, 2)
        return _interval(float(N_opt), samples[:, 0]), _interval(float(D_opt), samples[:, 1])

    def summary(self) -> dict:
        """{name: {"value", "ci"}} for every parameter: what `python -m orchestrator.scaling fit` prints."""
        return {name: estimate.as_dict() for name, estimate in self.parameters().items()}


@_single_blas_thread
def fit_sweep(points: Points, bootstrap: int = 200, seed: int = 0) -> SweepFit:
    """Point estimates of both approaches and `bootstrap` refits of resamples stratified by budget."""
    groups = budget_groups(points)
    isoflop = fit_isoflop(points)
    law = _fit_law(points)
    rng = np.random.default_rng(seed)
    # A resample lists the budgets one after another, so its own groups are consecutive ranges.
    bounds = np.cumsum([0] + [len(g) for g in groups])
    resample_groups = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    law_samples, isoflop_samples = [], []
    for _ in range(bootstrap):
        resample = points.take(np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups]))
        law_samples.append(_fit_law(resample, start=law))
        refit = _isoflop_fit(resample, resample_groups)
        if refit is not None:
            isoflop_samples.append(refit)
    return SweepFit(points, law, isoflop, tuple(law_samples), tuple(isoflop_samples))
