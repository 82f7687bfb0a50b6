"""An upcycled model (``train.init``) exports like any other MoE model: the Hugging Face model
gives the project's logits, and for ``copy`` (renormalised top-k, no shared experts) the dense
model's too, so the export keeps what upcycling preserves. Tolerance: test_hf_export.py's."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import InitConfig
from pipeline.export.hf_dir import write_export
from pipeline.model.upcycling import upcycle_into

from .conftest import TINY, tiny_config, tiny_model
from .test_hf_export import ATOL, load_hf


@pytest.mark.parametrize("method", ["copy", "drop"])
def test_an_upcycled_model_exports_with_its_logits(method, tmp_path, tokenizer_dir, vocab_size):
    hidden = TINY["dense_hidden"]  # the experts are copies of the dense MLP: the same width
    dense = tiny_model(tiny_config(first_dense_layers=TINY["n_layers"]), vocab_size, seed=1)
    model = tiny_model(tiny_config(moe={"expert_hidden": hidden}), vocab_size, seed=2)
    upcycle_into(model, dense, InitConfig(upcycle_from="dense", method=method), 7, "dense")
    out = tmp_path / "hf"
    write_export(model, tokenizer_dir, out, "float32")
    hf, info = load_hf(out)
    assert {k: v for k, v in info.items() if v} == {}, info  # no missing/unexpected/mismatched
    idx = torch.randint(
        0, vocab_size, (3, model.cfg.max_seq_len), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours, theirs, dense_logits = model(idx).logits, hf(idx).logits, dense(idx).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
    # copy: the dense model's function (module docstring of pipeline/model/upcycling.py); drop
    # redraws half of each expert's units, so its logits leave the dense model's.
    preserved = torch.allclose(theirs, dense_logits, atol=ATOL, rtol=0)
    assert preserved == (method == "copy")
