"""Lightning training of the MoE language model.

``data`` (token windows, the resumable sampler), ``module`` (LightningModule: loss, optimizer),
``optim`` (parameter groups, schedule), ``callbacks`` (sampler progress, ``last.ckpt``,
metrics), ``checkpoint`` (atomic, pickle-free checkpoint files, config checks, weight export),
``metrics`` (router statistics, MFU), ``outputs`` (file locations, DVC metrics and plots) and
``trainer`` (build the Trainer from params, run one training).
"""
