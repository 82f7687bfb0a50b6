"""Scale-out: expert parallelism, FSDP2 sharding and distributed checkpoints.

``expert``: the all-to-all expert dispatch; ``setup``: what ``configure_model`` applies to a
model on a ``data_parallel × expert_parallel`` mesh, plus the gradient reductions it then
owes; ``checkpoint``: torch.distributed.checkpoint save/load that reshards across layouts;
``strategy``: Lightning's ``ModelParallelStrategy`` with those checkpoints.
"""
