"""The `parallel.` section: pipeline stages, how layers spread over them, and per-block transforms.

Every stage's tree holds it; the alignment and RL stages refuse pipeline stages in
their own `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from workloads.errors import UserInputError
from workloads.schema import option

PARTITION_METHODS = ("parameters", "uniform")


@dataclass
class ParallelConfig:
    """Model parallelism and per-block transforms: pipeline stages, activation checkpointing, compile."""

    pipeline_stages: int = option(
        1, "pipeline stages the model is cut into; data-parallel degree = scaling.num_workers / pipeline_stages"
    )
    partition_method: str = option(
        "parameters",
        "spreading layers over stages: parameters (balance parameter counts) | uniform (equal layer counts)",
    )
    activation_checkpointing: bool = option(
        False,
        "recompute each block's activations in the backward pass instead of keeping them (less memory, more compute)",
    )
    compile_blocks: bool = option(
        False, "compile each transformer block with torch.compile, after activation checkpointing (slower first steps)"
    )

    def validate(self) -> None:
        if self.pipeline_stages < 1:
            raise UserInputError(f"parallel.pipeline_stages: must be >= 1, got {self.pipeline_stages}")
        if self.partition_method not in PARTITION_METHODS:
            raise UserInputError(
                f"parallel.partition_method: '{self.partition_method}' is not one of {' | '.join(PARTITION_METHODS)}"
            )

    def check_layout(self, num_workers: int, zero_stage: int, n_layers: int) -> None:
        """The stages against the workers, the ZeRO stage and the layers they cut (a tree's cross-section check)."""
        stages = self.pipeline_stages
        if num_workers % stages:
            raise UserInputError(f"parallel.pipeline_stages={stages} does not divide scaling.num_workers={num_workers}")
        if n_layers < stages:
            raise UserInputError(f"model.n_layers={n_layers} cannot cover parallel.pipeline_stages={stages}")
        if stages > 1 and zero_stage > 1:
            raise UserInputError(
                f"deepspeed.zero_stage={zero_stage} is incompatible with pipeline parallelism "
                "(DeepSpeed supports ZeRO 0 or 1 with pipelines)"
            )
