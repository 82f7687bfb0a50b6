"""Raw Triton kernels for the MoE layer: private ``@triton.jit`` kernels and launchers that check
their inputs and return plain tensors (no autograd: that is :mod:`pipeline.ops`).

Kernels are named for the arithmetic they do; the ops that wrap them are named for their role
in the MoE layer (``docs/ARCHITECTURE.md``, "Three layers"):

- :mod:`~pipeline.kernels.row_assignment` (``assign_rows``): histogram + prefix sum of expert
  ids → the row of each (token, slot) in an expert-grouped buffer. Role: dispatch.
- :mod:`~pipeline.kernels.rows` (``scatter_rows``, ``gather_sum``, ``row_dot``): moving rows
  between token order and expert order. Roles: combine and its backward.
- :mod:`~pipeline.kernels.grouped_gemm` (``rows_mm``, ``wgrad_mm``): grouped GEMMs over
  expert-contiguous rows, with the token gather fused into the loads and the SwiGLU activation
  (and its backward) fused into the epilogue. Role: experts.
- :mod:`~pipeline.kernels.topk_routing` (``topk_route``, ``topk_route_backward``): scores →
  bias → top-k → renormalisation, with counts and loss sums, in one pass. Role: router.

Each module imports triton when imported, so import them only where they are needed.

CPU runs. ``TRITON_INTERPRET=1`` makes Triton run kernels on CPU tensors, but Triton reads it
when a kernel is DEFINED, i.e. when one of the modules above is imported: set it before that
(tests/conftest.py does). :func:`pipeline.kernels.launch.check_device` raises a clear error
when a CPU tensor reaches a kernel compiled for a GPU. This ``__init__`` imports nothing, so
importing :mod:`pipeline.kernels` alone is safe at any time.
"""
