"""Code shared by the scripts: datasets, models, metrics, corruptions, checkpoints."""
