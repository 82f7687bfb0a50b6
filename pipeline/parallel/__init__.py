"""Scale-out: what ``configure_model`` applies on a ``data_parallel × expert_parallel`` mesh.

``setup``: expert parallelism (each rank keeps its block of experts, and the MoE layers switch
to the all-to-all dispatcher of :mod:`pipeline.model.dispatch`), FSDP2 sharding, activation
checkpointing, and the gradient reductions the layout then owes; ``dcp``: distributed
checkpoints that reshard across layouts, published atomically; ``strategy``: Lightning's
``ModelParallelStrategy`` with those checkpoints. This package may import :mod:`pipeline.model`,
never the reverse.
"""
