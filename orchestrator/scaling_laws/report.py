"""A sweep's report: PNG plots, `report.md`, and `report.html` with the plots embedded.

`write_report` draws what the fits say (IsoFLOP curves and their minima, loss
against compute with the frontier, N_opt(C) and D_opt(C) with bootstrap bands,
fitted against observed loss, every trial's training curve), tabulates the
fitted parameters beside Chinchilla's and Epoch AI's, recommends N and D for a
target budget, lists the failed trials with their reasons, and compares a
verification run's measured loss with the prediction. The Markdown refers to the
PNGs beside it; the HTML embeds them, so it can be mailed or attached alone.

Figures are drawn with matplotlib's object API (`Figure`, never pyplot), which
needs no display and leaves no global figure state behind.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from orchestrator.scaling_laws.fit import CHINCHILLA, EPOCH, Estimate, SweepFit, budget_groups
from orchestrator.scaling_laws.points import Trial

DEFAULT_TARGET_FACTOR = 10.0  # without a target, recommend for one decade beyond the largest budget
PARAMETER_NAMES = {
    "E": "E",
    "A": "A",
    "B": "B",
    "alpha": "α",
    "beta": "β",
    "a": "a (N_opt ∝ C^a)",
    "b": "b (D_opt ∝ C^b)",
}
SCALES = {"A", "B"}  # printed to three significant digits; E and the exponents to three decimals


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    plots: list[Path]


def write_report(
    sweep_dir: Path,
    trials: list[Trial],
    fits: SweepFit,
    out_dir: Path,
    target_flops: float | None = None,
    verify: Trial | None = None,
    n_label: str = "non-embedding parameters",
) -> ReportFiles:
    """Write the report of the sweep in `sweep_dir` into `out_dir` (created if missing).

    `trials` are all the sweep's trials, failed ones included; `fits` was fitted to the
    successful ones. `target_flops` defaults to 10x the largest budget. `verify` is a
    run trained at a recommended size, compared with approach 3's prediction. `n_label`
    says what the trials' N counts, so the recommendation can be followed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    budgets = [curve.C for curve in fits.isoflop.curves]
    target = target_flops if target_flops is not None else DEFAULT_TARGET_FACTOR * max(budgets)
    colours = _BudgetColours(budgets)
    plots = {
        "isoflop.png": _plot_isoflop(fits, colours),
        "frontier.png": _plot_frontier(fits, colours, target),
        "allocation.png": _plot_allocation(fits, colours, target, n_label),
        "fit_vs_observed.png": _plot_fit_vs_observed(fits, colours),
    }
    if any(t.curve for t in trials):
        plots["curves.png"] = _plot_curves(trials, colours)
    for name, figure in plots.items():
        figure.savefig(out_dir / name, dpi=110)

    doc = _document(sweep_dir, trials, fits, target, target_flops is None, verify, n_label, set(plots))
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(doc.markdown())
    page.write_text(doc.html(out_dir))
    return ReportFiles(markdown, page, [out_dir / name for name in plots])


# ---------------------------------------------------------------- text


def _num(x: float) -> str:
    """Three significant digits (four below 10^4), powers of ten as 1.23e9 rather than 1.23e+09."""
    if 100 <= abs(x) < 1e4:
        return f"{x:.0f}"
    if x == 0 or 1e-2 <= abs(x) < 100:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _ci(estimate: Estimate, fmt=_num) -> str:
    return "–" if estimate.ci is None else f"[{fmt(estimate.ci[0])}, {fmt(estimate.ci[1])}]"


@dataclass
class Document:
    """Headings, paragraphs, tables and images, rendered once as Markdown and once as HTML."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def image(self, file: str, caption: str) -> None:
        self.blocks.append(("image", file, caption))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, *body in self.blocks:
            if kind == "heading":
                out += [f"## {body[0]}", ""]
            elif kind == "paragraph":
                out += [body[0], ""]
            elif kind == "table":
                header, rows = body
                cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  a reason may contain "|"
                out.append("| " + " | ".join(map(cell, header)) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
                out.append("")
            elif kind == "image":
                out += [f"![{body[1]}]({body[0]})", ""]
        return "\n".join(out)

    def html(self, image_dir: Path) -> str:
        esc = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}"
            "th{background:#eee}img{max-width:100%}</style>",
            "</head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for kind, *body in self.blocks:
            if kind == "heading":
                out.append(f"<h2>{esc(body[0])}</h2>")
            elif kind == "paragraph":
                out.append(f"<p>{esc(body[0])}</p>")
            elif kind == "table":
                header, rows = body
                out.append("<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
                out.append("</table>")
            elif kind == "image":
                data = base64.b64encode((image_dir / body[0]).read_bytes()).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{esc(body[1])}">'
                    f"<figcaption>{esc(body[1])}</figcaption></figure>"
                )
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _document(
    sweep_dir: Path,
    trials: list[Trial],
    fits: SweepFit,
    target: float,
    default_target: bool,
    verify: Trial | None,
    n_label: str,
    plots: set[str],
) -> Document:
    failed = [t for t in trials if not t.ok]
    curves = fits.isoflop.curves
    doc = Document(f"Scaling-law sweep: {sweep_dir.name}")
    doc.paragraph(
        f"{len(trials)} trials: {len(trials) - len(failed)} fitted, {len(failed)} failed (listed below, not fitted). "
        f"{len(curves)} compute budgets from {_num(curves[0].C)} to {_num(curves[-1].C)} FLOPs. "
        f"N counts {n_label}; D counts training tokens. Intervals are 95% percentile intervals over "
        f"{len(fits.law_samples)} bootstrap resamples of the points (resampled within each budget)."
    )
    _recommendation(doc, fits, target, default_target, n_label)
    _parameters(doc, fits)
    _isoflop_curves(doc, fits, n_label)
    doc.heading("Loss against compute")
    doc.image(
        "frontier.png",
        "Every fitted trial's loss against its compute, the frontier (best loss at or below each budget) "
        "and approach 3's compute-optimal loss",
    )
    doc.heading("Fit quality (approach 3)")
    doc.paragraph(
        f"Relative error of the fitted law on the fitted points: median {np.median(_residuals(fits)):.2%}, "
        f"largest {_residuals(fits).max():.2%}."
    )
    doc.image("fit_vs_observed.png", "Approach 3's predicted loss against the observed loss")
    doc.heading("Training curves")
    if "curves.png" in plots:
        doc.image("curves.png", "Validation loss against tokens seen for every trial that recorded a curve")
    else:
        doc.paragraph("No trial recorded a training curve.")
    doc.heading("Failed trials")
    if failed:
        doc.table(
            ["trial", f"N ({n_label})", "D (tokens)", "C (FLOPs)", "status", "reason"],
            [
                [t.name, _num(t.N), _num(t.D), _num(t.flops), t.status, t.reason or "(no reason recorded)"]
                for t in failed
            ],
        )
    else:
        doc.paragraph("None.")
    if verify is not None:
        _verification(doc, fits, verify, n_label)
    return doc


def _residuals(fits: SweepFit) -> np.ndarray:
    """|predicted / observed - 1| of approach 3 on the fitted points."""
    return np.abs(fits.law.loss(fits.points.N, fits.points.D) / fits.points.loss - 1)


def _recommendation(doc: Document, fits: SweepFit, target: float, default_target: bool, n_label: str) -> None:
    doc.heading(f"Recommendation for C = {_num(target)} FLOPs")
    N_opt, D_opt = fits.allocation(target)
    loss = fits.predict(N_opt.value, D_opt.value)
    law_N, law_D = fits.law_allocation(target)
    reach = target / fits.isoflop.curves[-1].C
    where = (
        f"the default target, {DEFAULT_TARGET_FACTOR:g}x the largest budget swept"
        if default_target
        else "the requested target"
    )
    doc.paragraph(
        f"C = {_num(target)} is {where}"
        + (
            f"; it extrapolates {_num(reach)}x beyond the largest budget, so treat the intervals as optimistic."
            if reach > 1.05
            else "."
        )
        + f" Train a model of N_opt {n_label} on D_opt tokens (approach 2, IsoFLOP minima);"
        " approach 3's loss law predicts the loss there (its interval covers the law's parameters,"
        " not trial-to-trial noise)."
    )
    loss_fmt = lambda v: f"{v:.4f}"  # noqa: E731
    doc.table(
        ["quantity", "estimate", "95% interval"],
        [
            [f"N_opt ({n_label}), approach 2", _num(N_opt.value), _ci(N_opt)],
            ["D_opt (tokens), approach 2", _num(D_opt.value), _ci(D_opt)],
            ["tokens per parameter D_opt / N_opt", f"{D_opt.value / N_opt.value:.1f}", ""],
            ["predicted loss at (N_opt, D_opt), approach 3", loss_fmt(loss.value), _ci(loss, loss_fmt)],
            ["for comparison: approach 3's optimum N at C = 6ND", _num(law_N.value), _ci(law_N)],
            ["for comparison: approach 3's optimum D at C = 6ND", _num(law_D.value), _ci(law_D)],
        ],
    )


def _parameters(doc: Document, fits: SweepFit) -> None:
    doc.heading("Fitted parameters")
    doc.paragraph(
        "E, A, B, α, β: approach 3, L(N, D) = E + A/N^α + B/D^β by Huber loss on log L. a, b: approach 2. "
        "The published fits used other data, tokenizers and parameter counts: compare exponents, not constants. "
        "Their a and b are the ones their laws imply, β/(α+β) and α/(α+β)."
    )
    estimates = fits.parameters()
    published = [
        {**{k: getattr(law, k) for k in ("E", "A", "B", "alpha", "beta")}, "a": law.exponents[0], "b": law.exponents[1]}
        for law in (CHINCHILLA, EPOCH)
    ]
    rows = []
    for key, label in PARAMETER_NAMES.items():
        fmt = _num if key in SCALES else (lambda v: f"{v:.3f}")
        rows.append([label, fmt(estimates[key].value), _ci(estimates[key], fmt), *(fmt(p[key]) for p in published)])
    doc.table(
        [
            "parameter",
            "this sweep",
            "95% interval",
            "Chinchilla (Hoffmann et al. 2022)",
            "Epoch AI (Besiroglu et al. 2024)",
        ],
        rows,
    )


def _isoflop_curves(doc: Document, fits: SweepFit, n_label: str) -> None:
    doc.heading("IsoFLOP curves (approach 2)")
    doc.table(
        [
            "budget C (FLOPs)",
            "trials",
            f"N_opt ({n_label})",
            "D_opt (tokens)",
            "D_opt / N_opt",
            "loss at the minimum",
            "minimum inside the sizes tried",
        ],
        [
            [
                _num(c.C),
                str(c.n_points),
                _num(c.N_opt),
                _num(c.D_opt),
                f"{c.D_opt / c.N_opt:.1f}",
                f"{np.polyval(c.parabola_N, math.log(c.N_opt)):.4f}",
                "yes" if c.inside else "no: the sweep should extend its sizes",
            ]
            for c in fits.isoflop.curves
        ],
    )
    doc.image(
        "isoflop.png", "Loss against N and against D per budget, with each budget's fitted parabola and its minimum"
    )
    doc.image(
        "allocation.png",
        "N_opt(C) and D_opt(C): IsoFLOP minima, the fitted power law with its 95% band, approach 3's optimum",
    )


def _verification(doc: Document, fits: SweepFit, verify: Trial, n_label: str) -> None:
    doc.heading(f"Verification run: {verify.name}")
    if not verify.ok:
        doc.paragraph(
            f"The verification run did not finish: {verify.status}: {verify.reason or '(no reason recorded)'}."
        )
        return
    prediction = fits.predict(verify.N, verify.D)
    error = prediction.value / verify.loss - 1
    inside = prediction.ci is not None and prediction.ci[0] <= verify.loss <= prediction.ci[1]
    doc.paragraph(
        "Approach 3's prediction for the run's N and D against its measured final loss. The interval covers the "
        "law's parameters only; one run's loss also scatters around the law as the sweep's trials do "
        f"(median {np.median(_residuals(fits)):.2%})."
    )
    loss_fmt = lambda v: f"{v:.4f}"  # noqa: E731
    doc.table(
        [
            f"N ({n_label})",
            "D (tokens)",
            "C (FLOPs)",
            "measured loss",
            "predicted loss (approach 3)",
            "95% interval",
            "relative error (predicted / measured - 1)",
            "measured inside the interval",
        ],
        [
            [
                _num(verify.N),
                _num(verify.D),
                _num(verify.flops),
                loss_fmt(verify.loss),
                loss_fmt(prediction.value),
                _ci(prediction, loss_fmt),
                f"{error:+.2%}",
                "yes" if inside else "no",
            ]
        ],
    )


# ---------------------------------------------------------------- plots


class _BudgetColours:
    """One colour per compute budget, by log C, shared by every plot."""

    def __init__(self, budgets: list[float]):
        low, high = min(budgets), max(budgets)
        self.norm = LogNorm(vmin=low, vmax=high if high > low else low * 10)
        self.cmap = colormaps["viridis"]

    def __call__(self, C):
        return self.cmap(self.norm(C))

    def colorbar(self, fig: Figure, ax) -> None:
        fig.colorbar(ScalarMappable(norm=self.norm, cmap=self.cmap), ax=ax, label="compute C (FLOPs)")


def _plot_isoflop(fits: SweepFit, colours: _BudgetColours) -> Figure:
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    panels = fig.subplots(1, 2, sharey=True)
    for ax, size, parabola, optimum, label in (
        (panels[0], fits.points.N, "parabola_N", "N_opt", "N (parameters)"),
        (panels[1], fits.points.D, "parabola_D", "D_opt", "D (tokens)"),
    ):
        for curve, members in zip(fits.isoflop.curves, budget_groups(fits.points)):
            colour = colours(curve.C)
            ax.scatter(size[members], fits.points.loss[members], s=16, color=colour, label=f"C = {_num(curve.C)}")
            lo, hi = np.log(size[members].min()), np.log(size[members].max())
            x = np.linspace(lo, hi, 200)
            ax.plot(np.exp(x), np.polyval(getattr(curve, parabola), x), color=colour, lw=1.2)
            best = getattr(curve, optimum)
            ax.scatter(
                [best],
                [np.polyval(getattr(curve, parabola), math.log(best))],
                marker="*",
                s=160,
                color=colour,
                edgecolor="black",
                zorder=3,
            )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    panels[0].set_ylabel("final validation loss")
    panels[0].set_title("IsoFLOP curves: loss against N (star: parabola minimum)")
    panels[1].set_title("the same trials against D")
    panels[0].legend(fontsize=8)
    return fig


def _plot_frontier(fits: SweepFit, colours: _BudgetColours, target: float) -> Figure:
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    C, loss = fits.points.C, fits.points.loss
    ax.scatter(C, loss, s=16, c=[colours(c) for c in C], label="trials")
    order = np.lexsort((loss, C))  # by C, and within one C lowest loss first
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(loss[order])[:-1]])
    frontier = order[loss[order] < best_before]  # trials no cheaper trial beats
    ax.step(
        np.append(C[frontier], C.max()),
        np.append(loss[frontier], loss[frontier][-1]),
        where="post",
        color="black",
        lw=1.5,
        marker="o",
        markevery=list(range(len(frontier))),
        mfc="none",
        label="frontier (best loss at or below C)",
    )
    grid = np.geomspace(C.min() / 2, max(target, C.max()) * 1.5, 200)
    N_opt, D_opt = fits.law.optimal_allocation(grid)
    ax.plot(grid, fits.law.loss(N_opt, D_opt), "--", color="tab:red", label="approach 3: compute-optimal loss")
    N_t, D_t = fits.allocation(target)
    predicted = fits.predict(N_t.value, D_t.value)
    if predicted.ci is not None:
        ax.errorbar(
            [target],
            [predicted.value],
            yerr=[[predicted.value - predicted.ci[0]], [predicted.ci[1] - predicted.value]],
            fmt="D",
            color="tab:red",
            capsize=4,
            label="prediction at the target (approach 2's N, D)",
        )
    else:
        ax.scatter([target], [predicted.value], marker="D", color="tab:red", label="prediction at the target")
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("final validation loss")
    ax.set_title("Loss against compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def _plot_allocation(fits: SweepFit, colours: _BudgetColours, target: float, n_label: str) -> Figure:
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    panels = fig.subplots(1, 2)
    budgets = np.array([c.C for c in fits.isoflop.curves])
    grid = np.geomspace(budgets.min() / 2, max(target, budgets.max()) * 1.5, 100)
    fitted = fits.isoflop.optimal_allocation(grid)
    law = fits.law.optimal_allocation(grid)
    bands = np.array([s.optimal_allocation(grid) for s in fits.isoflop_samples])  # (K, 2, len(grid))
    target_estimates = fits.allocation(target)
    for i, (ax, name, exponent, unit) in enumerate(
        (
            (panels[0], "N_opt", fits.isoflop.a, n_label),
            (panels[1], "D_opt", fits.isoflop.b, "tokens"),
        )
    ):
        minima = [getattr(c, name) for c in fits.isoflop.curves]
        ax.scatter(
            budgets, minima, color=[colours(c) for c in budgets], edgecolor="black", zorder=3, label="IsoFLOP minima"
        )
        ax.plot(grid, fitted[i], color="black", label=f"approach 2: {name} ∝ C^{exponent:.3f}")
        if len(bands):
            lo, hi = np.percentile(bands[:, i, :], [2.5, 97.5], axis=0)
            ax.fill_between(grid, lo, hi, color="gray", alpha=0.3, label="95% bootstrap band")
        ax.plot(grid, law[i], ":", color="tab:red", label="approach 3's optimum")
        estimate = target_estimates[i]
        ax.scatter(
            [target], [estimate.value], marker="D", color="tab:blue", zorder=3, label=f"target C = {_num(target)}"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(f"{name} ({unit})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    panels[0].set_title("Compute-optimal model size")
    panels[1].set_title("Compute-optimal training tokens")
    return fig


def _plot_fit_vs_observed(fits: SweepFit, colours: _BudgetColours) -> Figure:
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    observed = fits.points.loss
    predicted = fits.law.loss(fits.points.N, fits.points.D)
    ax.scatter(observed, predicted, s=16, c=[colours(c) for c in fits.points.C])
    span = [min(observed.min(), predicted.min()), max(observed.max(), predicted.max())]
    ax.plot(span, span, color="black", lw=1, label="predicted = observed")
    ax.set_xlabel("observed final loss")
    ax.set_ylabel("approach 3's predicted loss")
    ax.set_title("Fitted law against the trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    colours.colorbar(fig, ax)
    return fig


def _plot_curves(trials: list[Trial], colours: _BudgetColours) -> Figure:
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for t in trials:
        if t.curve:
            tokens, loss = np.array(t.curve).T  # (2, points)
            style = (
                {"color": colours(t.flops), "alpha": 0.8}
                if t.ok
                else {"color": "gray", "ls": "--", "label": "failed trial"}
            )
            ax.plot(tokens, loss, lw=0.9, **style)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation loss")
    ax.set_title("Training curves (colour: the trial's compute budget)")
    ax.grid(alpha=0.3, which="both")
    if any(t.curve and not t.ok for t in trials):
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[:1], labels[:1], fontsize=8)  # one entry for all failed trials
    colours.colorbar(fig, ax)
    return fig
