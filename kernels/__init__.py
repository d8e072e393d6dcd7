"""Triton kernels and torch reference ops for applying encoded deltas (later issues)."""
