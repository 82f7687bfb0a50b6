"""What a run records about its MoE backend and its MFU peak: the triton self-check's outcome as
the MLflow tag ``moe.backend_check`` and ``moe_backend_check`` in the metrics (what the model card
shows), and the per-device peak with its source."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from pipeline.model import backends
from pipeline.ops import triton_experts
from pipeline.tracking import stage_run
from pipeline.train.callbacks import BACKEND_CHECK_TAG
from pipeline.train.metrics import datasheet_peak_flops, peak_flops
from pipeline.train.trainer import train


def test_a_cpu_run_records_that_no_check_applied(tmp_path, tiny, caplog):
    with caplog.at_level("INFO", logger="pipeline.train.callbacks"):
        result = tiny.run(tiny.write_tokens(tmp_path), tiny.params(max_steps=2))
    assert (
        result.metrics["moe_backend_check"] == "not run: MoE backend torch (requested auto) on cpu"
    )
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training")]
    assert "MoE backend torch" in summary  # the one line saying what runs names the MoE path


@pytest.mark.skipif(not backends.triton_available(), reason="the check compares the triton path")
def test_a_failed_check_is_tagged_and_the_run_trains_on_torch(
    tmp_path, tiny, mlflow_uri, monkeypatch
):
    """The CPU made a Triton device for ``auto`` (as CUDA is), with a wrong experts kernel: the
    check fails before the first step, the run trains on the torch path, and says so."""
    if torch.cuda.is_available():
        pytest.skip("CPU tensors cannot reach kernels compiled for the GPU")
    monkeypatch.setattr(backends, "_VERDICTS", {})
    monkeypatch.setattr(backends, "TRITON_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(
        backends, "CHECK_SHAPE", backends.CheckShape(tokens=40, d_model=24, hidden=20)
    )
    right = triton_experts.swiglu_experts
    monkeypatch.setattr(triton_experts, "swiglu_experts", lambda *a: right(*a) * 1.05)
    monkeypatch.chdir(tmp_path)
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(max_steps=2)
    with stage_run("train", p, {}, {}, tmp_path / "run.json") as tracked:
        logger = MLFlowLogger(tracking_uri=mlflow_uri, run_id=tracked.run_id)
        result = train(p, paths, tiny.RUN_KEY, logger, progress_bar=False)
    line = result.metrics["moe_backend_check"]
    assert line.startswith("failed: triton vs torch, largest error ")
    assert "(cpu, float32, kernels triton " in line and "T=40 E=6 K=2 D=24 F=20" in line
    tags = MlflowClient(mlflow_uri).get_run(tracked.run_id).data.tags
    assert tags[BACKEND_CHECK_TAG] == line
    assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"  # what it trained on


@pytest.mark.parametrize(
    "name,product,flops",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5e12),
        ("NVIDIA H200", "H200 SXM", 989.5e12),
        ("NVIDIA A100-SXM4-80GB", "A100 (SXM or PCIe)", 312e12),
        ("NVIDIA B200", "HGX B200, per GPU", 2.25e15),
    ],
)
def test_known_gpus_have_their_datasheet_dense_bf16_peak(name, product, flops):
    assert datasheet_peak_flops(name) == (pytest.approx(flops), product)


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA L40S", "Tesla V100-SXM2-16GB"])
def test_other_gpus_have_no_datasheet_peak(name):
    assert datasheet_peak_flops(name) is None  # measured instead


def test_a_cpu_peak_is_measured():
    flops, source = peak_flops(torch.device("cpu"), torch.float32)
    assert source == "measured" and flops > 1e8
