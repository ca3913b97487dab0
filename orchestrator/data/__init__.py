"""Data on the driver: pretraining datasets built by a Ray Data pipeline (`pretraining`), fine-tuning
datasets (`finetuning`) from JSONL records (`records`), prompt sets for RL (`prompt_sets`), the checks made
before any worker starts (`checks`) and the sources' cached digests (`source_digests`, `stat_records`)."""
