"""Scaling-law sweeps: `python -m orchestrator.sweep`.

A sweep designs an IsoFLOP grid of model sizes per compute budget from a model
family (`family.py`, `design.py`), trains every point as a real pretrain run
launched by Ray Tune (`runner.py`: a function trainable per trial that fits the
same `TorchTrainer` as `orchestrator.pretrain`), keeps one record per trial in
its run directory (`records.py`), fits and reports the laws with
`orchestrator.report` plus the sweep's own sections (`summary.py`), and records
everything under one MLflow parent run (`tracking.py`).
"""
