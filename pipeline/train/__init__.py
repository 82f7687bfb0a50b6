"""Lightning training of the MoE language model.

``module`` (the LightningModule; its docstring lists one optimizer step, hook by hook),
``data`` (token windows, the resumable sampler), ``optim`` (parameter groups, schedule),
``callbacks`` (sampler progress, ``last.ckpt``, the NaN guard, the metrics monitor),
``checkpoint_io`` (atomic, pickle-free checkpoint files; resume checks), ``metrics`` (MFU, a
measured peak), ``outputs`` (the run fingerprint, DVC metrics and plots), ``trainer`` (build
the Trainer from params, run one training), ``upcycle`` (the dense model a run starts from) and
``consolidate`` (a distributed checkpoint into the model files).
"""
