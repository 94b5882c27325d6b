"""Hydra launcher: a sweep's optimizer-setting and seed grid points as batched jobs."""
