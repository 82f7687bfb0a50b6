"""Autograd ops of the MoE layer, one module per backend and role (``docs/ARCHITECTURE.md``).

Every backend provides the three roles the MoE layer's dispatcher and experts call:

- dispatch, ``group_by_expert(ids_TK, E)``: the rows of an expert-grouped buffer (token order
  within an expert, as a stable sort gives);
- experts, ``swiglu_experts(...)``: the SwiGLU of each grouped row under its expert's weights;
- combine, ``combine(...)``: the rows back onto their tokens, weighted and summed (the torch
  experts sum their rows per token themselves, so no S×D output buffer exists).

=========== ======================================== =========================================
backend     dispatch + combine                       experts
=========== ======================================== =========================================
reference   :mod:`~pipeline.ops.reference` (per-expert loops, plain autograd: the test oracle)
torch       :mod:`~pipeline.ops.torch_dispatch`      :mod:`~pipeline.ops.torch_experts`
            (stable sort, ``index_add``)             (grouped GEMMs, :mod:`~pipeline.ops.torch_gemm`,
                                                     or expert by expert; with the combine)
triton      :mod:`~pipeline.ops.triton_dispatch`     :mod:`~pipeline.ops.triton_experts`
            (custom ops over :mod:`pipeline.kernels`)
=========== ======================================== =========================================

The fused router's op is :mod:`~pipeline.ops.triton_routing`; the output head fused with the
cross-entropy, which every backend's training forward uses, is
:mod:`~pipeline.ops.linear_cross_entropy`. The ``triton_*`` modules import the kernels, hence
Triton, when imported: :mod:`pipeline.model` imports them on first use (Triton
reads ``TRITON_INTERPRET`` when a kernel is defined). Which backend runs is decided in one place,
:func:`pipeline.model.backends.resolve_backend`.
"""
