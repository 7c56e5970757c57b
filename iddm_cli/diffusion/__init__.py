"""Gaussian diffusion: noise schedules, the forward process and samplers."""
