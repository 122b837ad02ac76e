"""A run's life: composition root (``training``), run-key checks, run folders, signals, checkpoints, callbacks,
loggers and process settings."""
