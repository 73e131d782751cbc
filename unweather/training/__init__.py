"""Synthetic weather, single-weather teachers and the two-stage student."""
