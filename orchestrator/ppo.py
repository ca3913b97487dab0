"""`python -m orchestrator.ppo`: PPO from an SFT checkpoint with a reward model or function (see orchestrator/rl.py)."""
from orchestrator.rl import entry_point

if __name__ == "__main__":
    entry_point("ppo")
