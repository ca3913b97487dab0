"""`python -m orchestrator.dpo`: direct preference optimisation from the SFT model (see orchestrator/alignment.py)."""
from orchestrator.alignment import entry_point

if __name__ == "__main__":
    entry_point("dpo")
