"""The run's Lightning callbacks: budgets, plateau stopping, checkpoints, provenance and RNG state."""
