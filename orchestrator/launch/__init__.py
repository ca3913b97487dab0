"""Launching on Ray: connecting (`ray_runtime`), one stage's Ray Train fit (`trainer`), the run directory's
record (`run_state`), MLflow (`tracking`), NCCL fabric presets (`fabric`), the best checkpoint
(`best_checkpoint`, kept by a Ray Train callback in `callbacks`)."""
