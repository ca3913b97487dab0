"""Parallelism in one place: the `parallel.` and `deepspeed.` sections, per-block transforms
(activation checkpointing, compile), DeepSpeed's pipeline engine and its ZeRO engine.

The model (`workloads.model`) knows none of this; these modules wrap it, in a fixed
order: activation checkpointing, then compile, then the engine.
"""
