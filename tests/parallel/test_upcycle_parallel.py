"""An upcycled run (``train.init``) under expert parallelism (gloo, CPU, 2 processes): the same
step-0 loss, loss curve, routing digests and trained weights as the single-process upcycled run,
and its distributed checkpoint exports exactly the weights it wrote.

The experts are drop-upcycled (``method: drop``), so each one differs from the others from
step 0: with ``copy`` all experts are the same tensor, and a rank holding the wrong experts would
compute the same losses. Tolerances: those of test_lightning.py (the layouts sum the same
products in another order).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.model import MoETransformer
from pipeline.model_io import model_identity, save_model
from pipeline.paths import ModelFiles

from .test_lightning import (
    LOSS,
    WEIGHTS,
    assert_dcp_exports_the_trained_weights,
    assert_same_weights,
    losses,
    train,
)

HIDDEN = 64  # the tiny model's dense_hidden; the experts take the same width to be copies


@pytest.fixture(scope="module")
def dense_dir(tiny, tmp_path_factory) -> Path:
    """A dense tiny model (both layers dense MLPs) as the train stage writes it; init_std 0.3
    puts its loss far from the uniform log(V) that a model from scratch starts at."""
    cfg = tiny.params(model={"first_dense_layers": 2, "init_std": 0.3}).train.model
    torch.manual_seed(11)
    directory = tmp_path_factory.mktemp("dense")
    save_model(
        MoETransformer(cfg, tiny.VOCAB),
        model_identity(cfg, tiny.VOCAB),
        ModelFiles.in_dir(directory),
    )
    return directory


@pytest.mark.multiprocess
def test_an_upcycled_run_on_ep2_trains_like_one_process_and_exports_from_dcp(
    launcher, tiny, dense_dir, tmp_path
):
    upcycled = {
        "model": {"moe": {"expert_hidden": HIDDEN}},
        "init": {"upcycle_from": str(dense_dir), "method": "drop", "drop_ratio": 0.5},
    }
    ep = train(launcher, tiny, tmp_path / "ep", 2, 2, "model_parallel", steps=3,
               parallel={"expert_parallel": 2}, train=upcycled)  # fmt: skip
    # The single-process reference in this process (one interpreter start less), with the
    # settings lightning_worker.py gives the EP run: one micro-batch of 4 windows per step.
    one = tiny.run(
        tiny.write_tokens(tmp_path / "one"),
        tiny.params(**upcycled, max_steps=3, runtime={"checkpoint_every": 2},
                    monitor={"log_every": 1, "val_every": 2}),
    )  # fmt: skip

    assert abs(losses(ep)[0] - math.log(tiny.VOCAB)) > 0.1  # the dense weights set step 0
    assert len(losses(ep)) == 3
    assert losses(ep) == pytest.approx(tiny.losses(one), **LOSS)  # step 0's loss first
    assert ep["history"]["routing_digest"] == one.history["routing_digest"]
    val = [history["val"][-1]["val_loss"] for history in (ep["history"], one.history)]
    assert val[0] == pytest.approx(val[1], **LOSS)

    expected = load_file(tmp_path / "one" / "models" / "model.safetensors")
    w13 = expected["blocks.0.ffn.experts.w13"]  # (E, 2F, D): distinct experts, as drop made them
    assert all(not torch.allclose(w13[0], w13[e], atol=1e-3) for e in range(1, w13.shape[0]))
    trained = assert_dcp_exports_the_trained_weights(tmp_path / "ep", tmp_path, tiny.RUN_KEY)
    # AdamW divides each gradient by its running RMS: an element whose gradient is near zero
    # moves by about the learning rate whichever its sign, and the two layouts' summation
    # orders can flip that sign (measured: 1 element in 16384 off by 1.5e-5 after 3 steps). A
    # rank holding the wrong experts would be off by more than 1e-3 (the experts differ by that
    # much, asserted above).
    assert_same_weights(trained, expected, **{**WEIGHTS, "atol": 5e-5})
