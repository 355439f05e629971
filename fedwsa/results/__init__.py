"""Run directories and what is read from them: metrics, summaries, plots (nothing of training)."""
