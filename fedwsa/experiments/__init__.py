"""Grids of runs (`fedwsa compare`), their progress display, and the notebook helpers."""
