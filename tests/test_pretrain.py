"""Real pretrain jobs on a local Ray: DeepSpeed ZeRO 0-3 with 1 and 2 workers, and resume."""
from __future__ import annotations

import pytest

from pretrain_helpers import ensure_local_ray, run_tiny, step_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def curves(tiny_dataset, tmp_path_factory, tracking_uri):
    """20-step loss curves of the tiny recipe for every ZeRO stage with 1 and 2 workers.

    The global batch is the same (8 sequences) for both worker counts, so every
    layout sees the same data in each step.
    """
    ensure_local_ray()
    output = tmp_path_factory.mktemp("layouts")
    results = {}
    for workers, accumulation in ((1, 2), (2, 1)):
        for stage in (0, 1, 2, 3):
            name = f"w{workers}-z{stage}"
            final = run_tiny(
                tiny_dataset, output, tracking_uri, f"--run.name={name}", f"--deepspeed.zero_stage={stage}",
                f"--scaling.num_workers={workers}", f"--train.grad_accum_steps={accumulation}",
            )
            results[(workers, stage)] = (step_metrics(output / name), final)
    return results


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_loss_goes_down(curves, workers, stage):
    losses, final = curves[(workers, stage)]
    assert sorted(losses) == list(range(1, 21))
    first, last_five = losses[1], [losses[s] for s in range(16, 21)]
    assert max(last_five) < 0.85 * first, f"loss did not fall: step 1 {first:.3f}, steps 16-20 {last_five}"
    assert final["eval/bpb"] > 0 and final["checkpoint"]


def test_step_one_loss_identical_across_stages_and_worker_counts(curves):
    first = {layout: losses[1] for layout, (losses, _) in curves.items()}
    reference = first[(1, 0)]
    for layout, value in first.items():
        assert value == pytest.approx(reference, rel=1e-6), f"{layout}: {value} vs {reference}"


def test_curves_agree_across_zero_stages(curves):
    reference, _ = curves[(1, 0)]
    for layout, (losses, _) in curves.items():
        for step in (5, 10, 20):
            assert losses[step] == pytest.approx(reference[step], rel=1e-3), f"{layout} step {step}"


def test_resume_continues_the_same_loss_curve(tiny_dataset, tmp_path, tracking_uri, ray_local):
    run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=straight")
    halted = run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=resumed", "--train.halt_at_step=7")
    assert halted["step"] == 7
    final = run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=resumed")
    assert final["step"] == 20
    straight, resumed = step_metrics(tmp_path / "straight"), step_metrics(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 21))
    for step in range(8, 21):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=0), f"step {step}"
