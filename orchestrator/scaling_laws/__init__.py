"""Scaling laws: the sweep that measures them and the fits and report that state them.

A sweep (`sweep`, its tree in `sweep_config`) designs an IsoFLOP grid of model sizes per
compute budget from a model family (`family`, `grid`), trains every point as a real pretrain
run launched by Ray Tune (`tune_runner`), keeps one record per trial (`trial_records`),
fits the laws (`points`, `fit`), writes the report (`report`, `sweep_report`, with the
sweep's own sections from `sweep_summary`), and records everything under one MLflow parent
run (`parent_run`). `dry_run` prints the grid and an estimate instead.
"""
