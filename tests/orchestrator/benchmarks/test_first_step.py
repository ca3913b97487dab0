"""The first-step section's bookkeeping: one launch that builds DeepSpeed's ops, then cold launches."""

from __future__ import annotations

from orchestrator.benchmarks import first_step


def test_first_build_is_reported_apart_and_the_lowest_cold_launch_counts(tmp_path, monkeypatch):
    extensions = tmp_path / "first-step-torch-extensions"
    (extensions / "stale").mkdir(parents=True)  # a previous bench's build must not be reused
    launches = []

    def fake_launch(dataset_dir, workdir, extensions_dir):
        launches.append(sorted(p.name for p in extensions_dir.iterdir()) if extensions_dir.exists() else None)
        extensions_dir.mkdir(exist_ok=True)
        (extensions_dir / "op.so").touch()
        seconds = {1: 60.0, 2: 21.0, 3: 19.5}[len(launches)]
        return {
            "first_step_s": seconds,
            "details": {"phases_s": {"first_step": seconds}, "exit_status": 0, "load_average_at_launch": 0.1},
        }

    monkeypatch.setattr(first_step, "measure_first_step", fake_launch)
    measured = first_step.measure_first_steps(tmp_path / "dataset", tmp_path, cold_runs=2)
    assert launches == [None, ["op.so"], ["op.so"]]  # built from empty once, then reused
    assert measured["first_step_build_s"] == 60.0 and measured["first_step_s"] == 19.5
    assert [run["phases_s"]["first_step"] for run in measured["details"]["cold_runs"]] == [21.0, 19.5]
    assert measured["details"]["first_build"]["phases_s"] == {"first_step": 60.0}
