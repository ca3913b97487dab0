"""Using a trained checkpoint, without Ray: generation, evaluation, export and reward scores."""
