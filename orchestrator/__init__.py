"""The driver side: what runs in the Ray job. Its top level is the command surface, one thin module per
`python -m orchestrator.<command>` (or `orchestrator <command>`); the logic lives in its packages, in
layers (docs/architecture.md):

    commands -> benchmarks -> scaling_laws -> stages -> model_tools -> data -> launch -> config -> workloads
"""
