"""The one training engine: the recipe schema, run setup, the loop, distributed init, EMAs, checkpoints, resume, signals, logging."""
