"""Triton kernels for the MoE layer: private ``@triton.jit`` kernels and launchers that check.

Modules (each imports triton when imported, so import them only where they are needed):

- :mod:`~pipeline.kernels.permute`: histogram + prefix sum of expert ids → the row of each
  (token, slot) in an expert-grouped buffer, with capacity drops marked and counted;
- :mod:`~pipeline.kernels.rows`: moving rows between token order and expert order (scatter,
  weighted gather-sum = combine, per-row dot products for the routing-weight gradient);
- :mod:`~pipeline.kernels.grouped_mm`: grouped GEMMs over expert-contiguous rows, with the token
  gather fused into the loads and the SwiGLU activation (and its backward) fused into the
  epilogue;
- :mod:`~pipeline.kernels.router`: the fused router (scores → bias → top-k → renormalisation,
  counts and loss sums) and its backward.

CPU runs. ``TRITON_INTERPRET=1`` makes Triton run kernels on CPU tensors, but Triton reads it
when a kernel is DEFINED, i.e. when one of the modules above is imported: set it before that
(tests/kernels/conftest.py does). :func:`pipeline.kernels.launch.check_device` raises a clear
error when a CPU tensor reaches a kernel compiled for a GPU. This ``__init__`` imports nothing,
so importing :mod:`pipeline.kernels` alone is safe at any time.
"""
