"""Shared setup for the codec tests.

The CI and dev boxes share a few cores between workers; multi-threaded LAPACK on an oversubscribed
box can turn a 30 ms SVD into seconds, so the codec tests run torch single-threaded.
"""

import torch

torch.set_num_threads(1)
