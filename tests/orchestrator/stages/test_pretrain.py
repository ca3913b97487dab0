"""The pretrain tree's checks before launch: parallel degrees against the workers, the training identity."""

from __future__ import annotations

import pytest

from orchestrator.stages.pretrain import PRETRAIN
from workloads.errors import UserInputError


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--scaling.num_workers=4", "--parallel.pipeline_stages=3"],
            "parallel.pipeline_stages=3 does not divide scaling.num_workers=4",
        ),
        (
            ["--scaling.num_workers=3", "--parallel.pipeline_stages=3"],
            "model.n_layers=2 cannot cover parallel.pipeline_stages=3",
        ),
        (
            ["--scaling.num_workers=2", "--parallel.pipeline_stages=2", "--deepspeed.zero_stage=2"],
            "deepspeed.zero_stage=2 is incompatible with pipeline parallelism "
            "(DeepSpeed supports ZeRO 0 or 1 with pipelines)",
        ),
        (
            ["--scaling.num_workers=2", "--parallel.pipeline_stages=2", "--deepspeed.zero_stage=3"],
            "deepspeed.zero_stage=3 is incompatible with pipeline parallelism",
        ),
        (["--parallel.pipeline_stages=0"], "parallel.pipeline_stages: must be >= 1, got 0"),
        (
            ["--parallel.partition_method=type:Block"],
            "parallel.partition_method: 'type:Block' is not one of parameters | uniform",
        ),
    ],
)
def test_bad_parallel_layout_fails_with_one_line_naming_the_numbers(args, message):
    with pytest.raises(UserInputError) as caught:
        PRETRAIN.parse(["--config", "tiny", *args])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_pipeline_stages_divide_the_workers_into_data_parallel_pipelines():
    cfg = PRETRAIN.parse(
        ["--config", "tiny", "--scaling.num_workers=4", "--parallel.pipeline_stages=2", "--train.grad_accum_steps=1"]
    )
    assert cfg.data_parallel_degree() == 2
    assert cfg.train.resolved_global_batch(cfg.data_parallel_degree()) == 8  # 4 per micro-batch x 2 pipelines
    plain = PRETRAIN.parse(["--config", "tiny", "--scaling.num_workers=4"])
    assert plain.data_parallel_degree() == 4
    # ZeRO 2/3 stay allowed without pipelines.
    assert (
        PRETRAIN.parse(
            ["--config", "tiny", "--scaling.num_workers=2", "--deepspeed.zero_stage=3"]
        ).parallel.pipeline_stages
        == 1
    )


def test_parallel_section_is_part_of_the_training_identity():
    one = PRETRAIN.parse(["--config", "tiny", "--scaling.num_workers=2"])
    two = PRETRAIN.parse(["--config", "tiny", "--scaling.num_workers=2", "--parallel.pipeline_stages=2"])
    assert PRETRAIN.identity(one) != PRETRAIN.identity(two)
    recomputing = PRETRAIN.parse(
        ["--config", "tiny", "--scaling.num_workers=2", "--parallel.activation_checkpointing=true"]
    )
    assert PRETRAIN.identity(recomputing) == PRETRAIN.identity(one)  # same numbers: may change on a resume
    compiled = PRETRAIN.parse(["--config", "tiny", "--scaling.num_workers=2", "--parallel.compile_blocks=true"])
    assert PRETRAIN.identity(compiled) == PRETRAIN.identity(one)
    across_documents = PRETRAIN.parse(["--config", "tiny", "--scaling.num_workers=2", "--model.attention_mask=causal"])
    assert PRETRAIN.identity(across_documents) != PRETRAIN.identity(one)  # another loss curve
