"""Combiners, calibration, TTA ablation, members and candidate specs."""
