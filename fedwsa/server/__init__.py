"""The Flower ServerApp and what it needs: preflight checks, central evaluation, checkpoints,
and running a federation in-process or in Flower's simulation engine."""
