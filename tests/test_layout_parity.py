"""Loss parity across parallel layouts, and the pipeline-parallel pieces it rests on.

Every layout trains the tiny recipe for 20 steps from the same seed on the same
samples with the same global batch (8 sequences): 1 and 2 workers under ZeRO 0-3,
2 pipeline stages, and 2 stages x 2 data-parallel pipelines. The same computation
split differently must trace the same loss curve; only the order of floating-point
sums may differ.
"""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.pretrain import parse_cli
from pretrain_helpers import ensure_local_ray, run_tiny, step_metrics
from workloads.checkpoint_loading import load_checkpoint
from workloads.data.loader import PackedDataset
from workloads.engine import DeepSpeedConfig, build_engine
from workloads.errors import UserInputError
from workloads.evaluation import eval_sample_indices, evaluate
from workloads.model import GPT, ModelConfig
from workloads.pipeline import (
    ParallelConfig,
    build_pipeline_engine,
    build_pipeline_module,
    checkpoint_blocks,
    pipeline_evaluate,
    pipeline_train_step,
)
from workloads.stages.pretrain import train_step
from workloads.train_config import TrainConfig

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


# ---------------------------------------------------------------------------
# The `parallel.` section
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args, message",
    [
        (["--scaling.num_workers=4", "--parallel.pipeline_stages=3"],
         "parallel.pipeline_stages=3 does not divide scaling.num_workers=4"),
        (["--scaling.num_workers=3", "--parallel.pipeline_stages=3"],
         "model.n_layers=2 cannot cover parallel.pipeline_stages=3"),
        (["--scaling.num_workers=2", "--parallel.pipeline_stages=2", "--deepspeed.zero_stage=2"],
         "deepspeed.zero_stage=2 is incompatible with pipeline parallelism (DeepSpeed supports ZeRO 0 or 1 with pipelines)"),
        (["--scaling.num_workers=2", "--parallel.pipeline_stages=2", "--deepspeed.zero_stage=3"],
         "deepspeed.zero_stage=3 is incompatible with pipeline parallelism"),
        (["--parallel.pipeline_stages=0"], "parallel.pipeline_stages: must be >= 1, got 0"),
        (["--parallel.partition_method=type:Block"],
         "parallel.partition_method: 'type:Block' is not one of parameters | uniform"),
    ],
)
def test_bad_parallel_layout_fails_with_one_line_naming_the_numbers(args, message):
    with pytest.raises(UserInputError) as caught:
        parse_cli(["--config", "tiny", *args])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_pipeline_stages_divide_the_workers_into_data_parallel_pipelines():
    cfg = parse_cli(["--config", "tiny", "--scaling.num_workers=4", "--parallel.pipeline_stages=2",
                     "--train.grad_accum_steps=1"])
    assert cfg.data_parallel_degree() == 2
    assert cfg.train.resolved_global_batch(cfg.data_parallel_degree()) == 8  # 4 per micro-batch x 2 pipelines
    plain = parse_cli(["--config", "tiny", "--scaling.num_workers=4"])
    assert plain.data_parallel_degree() == 4
    # ZeRO 2/3 stay allowed without pipelines.
    assert parse_cli(["--config", "tiny", "--scaling.num_workers=2", "--deepspeed.zero_stage=3"]).parallel.pipeline_stages == 1


def test_parallel_section_is_part_of_the_training_identity():
    one = parse_cli(["--config", "tiny", "--scaling.num_workers=2"])
    two = parse_cli(["--config", "tiny", "--scaling.num_workers=2", "--parallel.pipeline_stages=2"])
    assert one.training_identity() != two.training_identity()
    recomputing = parse_cli(["--config", "tiny", "--scaling.num_workers=2", "--parallel.activation_checkpointing=true"])
    assert recomputing.training_identity() == one.training_identity()  # same numbers: may change on a resume
    compiled = parse_cli(["--config", "tiny", "--scaling.num_workers=2", "--parallel.compile_blocks=true"])
    assert compiled.training_identity() == one.training_identity()
    across_documents = parse_cli(["--config", "tiny", "--scaling.num_workers=2", "--model.attention_mask=causal"])
    assert across_documents.training_identity() != one.training_identity()  # another loss curve


# ---------------------------------------------------------------------------
# The pipeline module against the plain model (one process, one stage)
# ---------------------------------------------------------------------------

def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_rank_group():
    """DeepSpeed's comm layer over a 1-rank gloo group, as PipelineModule needs one."""
    import deepspeed
    import torch.distributed as dist

    with pytest.MonkeyPatch.context() as env:
        for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(unused_port()), "RANK": "0",
                            "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}.items():
            env.setenv(name, value)
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
        yield
        dist.destroy_process_group()


def tiny_model(**changes) -> ModelConfig:
    return ModelConfig(vocab_size=96, d_model=32, n_layers=3, n_heads=2, max_seq_len=16, **changes)


def packed_batch(cfg: ModelConfig):
    """Token ids (2, 13) and segment ids with a document boundary inside the first row."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 13), generator=generator)
    segments = torch.tensor([[0] * 5 + [1] * 8, [0] * 13])
    return tokens[:, :-1], tokens[:, 1:], segments[:, :-1]


def gpt_named_values(pipeline, grads: bool = False) -> dict[str, torch.Tensor]:
    """The pipeline's parameters (or their gradients) under the names GPT gives them."""
    values = {}
    for module in pipeline.modules():
        prefix = getattr(module, "gpt_prefix", None)
        if prefix is None:
            continue
        for name, param in module.named_parameters():
            values[prefix + name] = param.grad if grads else param.detach()
    return values


def attention_calls(modules) -> list[int]:
    """A counter of attention forwards: a checkpointed block runs its forward again in backward."""
    calls = [0]
    for module in modules:
        module.attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("position", ["rope", "learned", "alibi"])
def test_pipeline_module_starts_from_the_plain_models_weights(one_rank_group, tied, position):
    cfg = tiny_model(tie_embeddings=tied, position=position)
    torch.manual_seed(7)
    reference = GPT(cfg)
    pipeline = build_pipeline_module(cfg, ParallelConfig(), seed=7)

    weights = gpt_named_values(pipeline)
    expected = dict(reference.named_parameters())  # a tied head appears once, as embed.tokens.weight
    assert sorted(weights) == sorted(expected)
    for name, value in weights.items():
        assert torch.equal(value, expected[name]), name

    inputs, targets, segments = packed_batch(cfg)
    plain_loss = reference(inputs, targets=targets, segment_ids=segments)
    pipeline_loss = pipeline.loss_fn(pipeline((inputs, segments)), targets)
    assert torch.equal(pipeline_loss, plain_loss)

    plain_loss.backward()
    pipeline_loss.backward()
    grads = gpt_named_values(pipeline, grads=True)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)


def test_activation_checkpointing_recomputes_blocks_without_changing_the_numbers(one_rank_group):
    cfg = tiny_model()
    inputs, targets, segments = packed_batch(cfg)

    torch.manual_seed(3)
    reference = GPT(cfg)
    reference(inputs, targets=targets, segment_ids=segments).backward()

    torch.manual_seed(3)
    checkpointed = checkpoint_blocks(GPT(cfg))
    assert checkpointed.state_dict().keys() == reference.state_dict().keys()
    calls = attention_calls(checkpointed.blocks)
    loss = checkpointed(inputs, targets=targets, segment_ids=segments)
    loss.backward()
    assert calls[0] == 2 * cfg.n_layers
    for (name, param), (_, expected) in zip(checkpointed.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(param.grad, expected.grad, msg=name)

    pipeline = build_pipeline_module(cfg, ParallelConfig(activation_checkpointing=True), seed=3)
    calls = attention_calls(m for m in pipeline.modules() if type(m).__name__ == "BlockStage")
    pipeline_loss = pipeline.loss_fn(pipeline((inputs, segments)), targets)
    pipeline_loss.backward()
    assert calls[0] == 2 * cfg.n_layers
    assert torch.equal(pipeline_loss, loss)
    grads = gpt_named_values(pipeline, grads=True)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)


class PackedSamples:
    """A stand-in for PackedDataset: sample i is 13 seeded tokens in two documents."""

    def __init__(self, cfg: ModelConfig):
        self.vocab_size = cfg.vocab_size

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack([torch.randint(0, self.vocab_size, (13,), generator=torch.Generator().manual_seed(int(i)))
                              for i in indices])  # (B, T + 1)
        segments = (torch.arange(13) >= 6).long().expand(len(indices), 13)
        return tokens, segments


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pipeline_engine_trains_and_evaluates_like_the_plain_engine(one_rank_group, precision):
    """One stage, so no activations travel; the engine, its step, loss and evaluation are the pipeline's own."""
    cfg = tiny_model()
    ds = DeepSpeedConfig(zero_stage=0, precision=precision)
    train = TrainConfig(micro_batch_size=2, grad_accum_steps=2, seed=5, warmup_steps=1, max_steps=3)
    data, cpu = PackedSamples(cfg), torch.device("cpu")
    torch.manual_seed(train.seed)
    plain = build_engine(GPT(cfg), ds, train, 1, on_gpu=False)
    pipeline = build_pipeline_engine(cfg, ParallelConfig(), ds, train, 1, on_gpu=False)

    for step in range(3):
        micro_batches = [np.arange(4 * step, 4 * step + 2), np.arange(4 * step + 2, 4 * step + 4)]
        expected = train_step(plain, data, micro_batches, cpu)
        assert pipeline_train_step(pipeline, data, micro_batches, cpu) == pytest.approx(expected, rel=1e-6), step

    indices = np.arange(100, 105)  # two micro-batches of 2 and a remainder of 1
    byte_lengths = torch.arange(1, cfg.vocab_size + 1)
    expected = evaluate(plain, data, indices, 2, byte_lengths, cpu)
    assert pipeline_evaluate(pipeline, data, indices, 2, byte_lengths, cpu) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------
# Real runs on a local Ray: every layout traces the same loss curve
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("layouts")


@pytest.fixture(scope="module")
def curves(tiny_dataset, layout_runs, tracking_uri):
    """{layout: (train losses by step, eval losses by step, final metrics)} for every layout, trained once."""
    ensure_local_ray()
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
    halted = run_tiny(tiny_dataset, layout_runs, tracking_uri, f"--run.name={name}", "--train.halt_at_step=7",
                      *RESUMED.overrides())
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
