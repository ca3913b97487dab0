"""`python -m orchestrator.sft`: supervised fine-tuning from a pretrain checkpoint (see orchestrator/alignment.py)."""
from orchestrator.alignment import entry_point

if __name__ == "__main__":
    entry_point("sft")
