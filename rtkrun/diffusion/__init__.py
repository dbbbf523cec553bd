"""Noise schedules, time grids, parametrisation conversions and training objectives."""
