"""The report of a sweep directory (`python -m orchestrator.report`, whose docstring says what it reads and
writes): its trials fitted, the law's report written (`report`), the sweep's own sections appended
(`sweep_summary`); and a sweep fetched from its MLflow parent run.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from orchestrator.launch.tracking import resolve_tracking_uri
from orchestrator.scaling_laws.fit import SweepFit, fit_sweep
from orchestrator.scaling_laws.points import Points, Trial, read_trials, write_points_csv
from orchestrator.scaling_laws.report import DEFAULT_TARGET_FACTOR, Document, ReportFiles, write_report
from orchestrator.scaling_laws.sweep_summary import add_sections, read_summary
from workloads.errors import UserInputError

TRIALS_FILE = "trials.json"
VERIFY_FILE = "verify.json"
REPORT_DIR = "report"
MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")


def read_verify(path: Path) -> Trial | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}") from None
    return Trial.from_dict(record, str(path))


def report_sweep(
    sweep_dir: Path,
    target_flops: float | None = None,
    n_label: str = "non-embedding parameters",
    bootstrap: int = 200,
    seed: int = 0,
    fits: SweepFit | None = None,
) -> ReportFiles:
    """Fit and report the sweep in `sweep_dir` into `sweep_dir/report/`.

    `fits`: the fit of trials.json's points with this `bootstrap` and `seed`, when the caller
    (the sweep, which has just fitted them) already holds it; otherwise it is fitted here.
    """
    if not sweep_dir.is_dir():
        raise UserInputError(f"{sweep_dir}: no such directory")
    if target_flops is not None and not target_flops > 0:
        raise UserInputError(f"--target-flops: must be positive, got {target_flops}")
    if bootstrap < 0:
        raise UserInputError(f"--bootstrap: must be 0 or more, got {bootstrap}")
    trials_path = sweep_dir / TRIALS_FILE
    trials = read_trials(trials_path)
    verify = read_verify(sweep_dir / VERIFY_FILE)
    if fits is None:
        fits = fit_sweep(Points.from_trials(trials, source=str(trials_path)), bootstrap=bootstrap, seed=seed)
    out_dir = sweep_dir / REPORT_DIR
    out_dir.mkdir(exist_ok=True)
    write_points_csv(trials, out_dir / "points.csv")
    files = write_report(sweep_dir, trials, fits, out_dir, target_flops=target_flops, verify=verify, n_label=n_label)
    append_sweep_sections(files, sweep_dir, target_flops, bootstrap, seed)
    return files


def append_sweep_sections(
    files: ReportFiles, sweep_dir: Path, target_flops: float | None, bootstrap: int, seed: int
) -> None:
    """The sweep's own sections (`orchestrator.scaling_laws.sweep_summary`) after the report's, in both renderings."""
    summary = read_summary(sweep_dir)
    if summary is None:
        return
    target = target_flops or summary.get("target_flops") or DEFAULT_TARGET_FACTOR * max(summary["budgets"])
    doc = Document("sweep")
    add_sections(doc, sweep_dir, summary, target, bootstrap, seed)
    markdown = doc.markdown().split("\n", 2)[2]  # without the title line and the blank after it
    files.markdown.write_text(files.markdown.read_text().rstrip("\n") + "\n\n" + markdown)
    page = doc.html(files.html.parent)
    body = page[page.index("</h1>") + len("</h1>") : page.rindex("</body>")]
    existing = files.html.read_text()
    cut = existing.rindex("</body>")
    files.html.write_text(existing[:cut] + body + existing[cut:])


def fetch_mlflow_sweep(run_id: str, tracking_uri: str) -> Path:
    """Download a sweep parent run's trial files into a new temporary directory named after the sweep."""
    # mlflow: only a report of an MLflow run id reads the tracking store
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
        names = {artifact.path for artifact in client.list_artifacts(run_id)}
    except MlflowException as err:
        raise UserInputError(f"{run_id}: no such MLflow run at {uri} ({str(err).splitlines()[0]})") from None
    if TRIALS_FILE not in names:
        raise UserInputError(f"{run_id}: the MLflow run has no {TRIALS_FILE} artifact (not a sweep's parent run)")
    target = Path(tempfile.mkdtemp(prefix=f"sweep-{run_id[:8]}-")) / run.data.tags.get("orchestrator.sweep", run_id)
    target.mkdir()
    for name in sorted(names):
        if name.endswith(".json"):
            client.download_artifacts(run_id, name, str(target))
    return target
