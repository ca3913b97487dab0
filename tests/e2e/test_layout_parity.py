"""Every parallel layout trains the same curve: 1 and 2 workers x ZeRO 0-3, pipelines, pipelines x data parallel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.helpers import join_shared_ray, run_tiny, step_metrics
from workloads.checkpoints.loading import load_checkpoint
from workloads.data.loader import PackedDataset
from workloads.evaluation import eval_sample_indices, evaluate

STEPS = 20


# 18 validation samples: 4 full micro-batches of 4 and a remainder of 2 on one pipeline,
# 2 full and a remainder of 1 on each of two, so pipeline evaluation covers uneven ends.
EVAL_SAMPLES = 18


@dataclasses.dataclass(frozen=True)
class Layout:
    """A way to split the same training over workers."""

    workers: int
    zero_stage: int
    pipeline_stages: int = 1

    @property
    def name(self) -> str:
        pipeline = f"-pp{self.pipeline_stages}" if self.pipeline_stages > 1 else ""
        return f"w{self.workers}{pipeline}-z{self.zero_stage}"

    def overrides(self) -> list[str]:
        data_parallel = self.workers // self.pipeline_stages
        return [
            f"--scaling.num_workers={self.workers}",
            f"--deepspeed.zero_stage={self.zero_stage}",
            f"--parallel.pipeline_stages={self.pipeline_stages}",
            # micro-batch 4 x accumulation x data-parallel degree = 8 sequences in every layout
            f"--train.grad_accum_steps={2 // data_parallel}",
            # The local Ray has 2 CPUs: four workers fit with half a CPU each.
            f"--scaling.cpus_per_worker={min(1.0, 2 / self.workers)}",
            f"--train.eval_samples={EVAL_SAMPLES}",
        ]


REFERENCE = Layout(1, 0)


DATA_PARALLEL = [Layout(workers, stage) for workers in (1, 2) for stage in (0, 1, 2, 3)]


PIPELINED = [Layout(2, 1, pipeline_stages=2), Layout(4, 0, pipeline_stages=2)]


RESUMED = PIPELINED[0]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("layouts")


@pytest.fixture(scope="module")
def curves(tiny_dataset, layout_runs, tracking_uri):
    """{layout: (train losses by step, eval losses by step, final metrics)} for every layout, trained once."""
    join_shared_ray()
    results = {}
    for layout in DATA_PARALLEL + PIPELINED:
        final = run_tiny(tiny_dataset, layout_runs, tracking_uri, f"--run.name={layout.name}", *layout.overrides())
        run_dir = layout_runs / layout.name
        results[layout] = (step_metrics(run_dir), step_metrics(run_dir, "eval/loss"), final)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("layout", DATA_PARALLEL + PIPELINED, ids=lambda layout: layout.name)
def test_loss_goes_down(curves, layout):
    losses, _, final = curves[layout]
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last_five = losses[1], [losses[s] for s in range(16, 21)]
    assert max(last_five) < 0.85 * first, f"loss did not fall: step 1 {first:.3f}, steps 16-20 {last_five}"
    assert final["eval/bpb"] > 0 and final["checkpoint"]


@pytest.mark.slow
def test_step_one_loss_identical_across_layouts(curves):
    reference = curves[REFERENCE][0][1]
    for layout, (losses, _, _) in curves.items():
        assert losses[1] == pytest.approx(reference, rel=1e-6), f"{layout.name}: {losses[1]} vs {reference}"


@pytest.mark.slow
def test_curves_agree_across_layouts_at_every_step(curves):
    reference, reference_eval, _ = curves[REFERENCE]
    for layout, (losses, evals, _) in curves.items():
        for step in range(1, STEPS + 1):
            assert losses[step] == pytest.approx(reference[step], rel=1e-3), f"{layout.name} step {step}"
        assert sorted(evals) == sorted(reference_eval) == [10, 20]
        for step, value in evals.items():
            assert value == pytest.approx(reference_eval[step], rel=1e-3), f"{layout.name} eval at step {step}"


@pytest.mark.slow
def test_curves_agree_closely_enough_to_catch_gradient_clipping_errors(curves):
    """Layouts differ only in summation order: about 1e-7 here after 20 steps.

    The 1e-3 above lets a real difference through: when the pipeline's gradient norm
    left out its second stage, clipping differed and the curves parted by 1.6e-4.
    """
    reference, _, _ = curves[REFERENCE]
    for layout, (losses, _, _) in curves.items():
        for step in range(1, STEPS + 1):
            assert losses[step] == pytest.approx(reference[step], rel=1e-5), f"{layout.name} step {step}"


@pytest.mark.slow
def test_pipeline_resume_continues_the_same_loss_curve(curves, tiny_dataset, layout_runs, tracking_uri):
    straight, _, _ = curves[RESUMED]
    name = f"{RESUMED.name}-resumed"
    halted = run_tiny(
        tiny_dataset, layout_runs, tracking_uri, f"--run.name={name}", "--train.halt_at_step=7", *RESUMED.overrides()
    )
    assert halted["step"] == 7
    final = run_tiny(tiny_dataset, layout_runs, tracking_uri, f"--run.name={name}", *RESUMED.overrides())
    assert final["step"] == STEPS
    resumed = step_metrics(layout_runs / name)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(8, STEPS + 1):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=0), f"step {step}"


@pytest.mark.slow
@pytest.mark.parametrize("layout", DATA_PARALLEL + PIPELINED, ids=lambda layout: layout.name)
def test_every_layouts_checkpoint_loads_as_a_plain_model_that_scores_what_training_reported(
    curves, layout, layout_runs, tiny_dataset
):
    """The run directory names its latest registered checkpoint; loading it needs neither Ray nor an engine.

    The plain model in one process scores the validation samples exactly as training's
    1, 2 or 4 workers did: the evaluation set does not depend on the world size.
    """
    _, _, final = curves[layout]
    loaded = load_checkpoint(layout_runs / layout.name)
    assert loaded.checkpoint == Path(final["checkpoint"]).resolve()
    assert loaded.step == STEPS and not loaded.model.training
    val = PackedDataset(tiny_dataset, "val")
    byte_lengths = torch.tensor(loaded.tokenizer.token_byte_lengths())
    indices = eval_sample_indices(val.num_samples, EVAL_SAMPLES, rank=0, world=1)
    metrics = evaluate(loaded.model, val, indices, 4, byte_lengths, torch.device("cpu"))
    assert metrics["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-6)
    assert metrics["eval/bpb"] == pytest.approx(final["eval/bpb"], rel=1e-6)


@pytest.mark.slow
def test_the_best_checkpoint_link_loads_the_best_steps_weights(curves, layout_runs):
    run_dir = layout_runs / REFERENCE.name
    best = load_checkpoint(run_dir / "best_checkpoint")
    best_step = min(curves[REFERENCE][1].items(), key=lambda item: item[1])[0]
    assert best.step == best_step
    assert best.checkpoint == (run_dir / "best_checkpoint").resolve()
