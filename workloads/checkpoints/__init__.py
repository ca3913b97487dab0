"""Checkpoints in one place: saving and resuming inside workers (`saving`), loading any
checkpoint as a plain model without Ray or DeepSpeed's engine (`loading`), and the weights a
run starts from (`initialization`).
"""
