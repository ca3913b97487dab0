"""`python -m orchestrator.reward`: a reward model from ranked responses (see orchestrator/alignment.py)."""
from orchestrator.alignment import entry_point

if __name__ == "__main__":
    entry_point("reward")
