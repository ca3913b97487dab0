"""Code that runs inside training workers: model, data, engines, loops.

Nothing here imports `orchestrator`: each component owns its own config section.
"""
