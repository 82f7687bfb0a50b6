"""The pure parts of bench/upcycling.py (issue 20's compute-matched experiment): the arms' params
and the models they define, the FLOPs accounting they are compared by, reading a curve at a
FLOPs point, and the matched table. Nothing here trains."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import InitConfig
from pipeline.io import write_json
from pipeline.model import MoETransformer
from pipeline.model.upcycling import upcycle_into
from pipeline.model_io import model_identity, save_model
from pipeline.paths import ModelFiles

_SPEC = importlib.util.spec_from_file_location(
    "bench_upcycling", Path(__file__).resolve().parents[1] / "bench" / "upcycling.py"
)
upcycling = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_upcycling"] = upcycling
_SPEC.loader.exec_module(upcycling)

VOCAB = 8192  # the preset's tokenize.vocab_size


@pytest.fixture(scope="module")
def arm_params():
    """Each default arm's validated params (shipped params.yaml + the real-text preset), by the
    arm's kind and length: dense, upcycled, moe-long, dense-long."""
    base = upcycling.base_settings([], [])
    dense, upcycled, moe, dense_long = upcycling.plan(300, 300, "copy")
    named = {"dense": dense, "upcycled": upcycled, "moe-long": moe, "dense-long": dense_long}
    return {
        name: upcycling.validated(upcycling.arm_settings(base, arm, "copy"), arm.key)
        for name, arm in named.items()
    }


def test_the_arms_are_the_issues_four_runs(arm_params):
    p = arm_params
    assert [a.steps for a in upcycling.plan(300, 200, "drop")] == [300, 200, 500, 500]
    assert p["dense"].train.model.first_dense_layers == p["dense"].train.model.n_layers
    assert p["moe-long"].train.model.first_dense_layers == 0
    assert p["upcycled"].train.init == InitConfig(upcycle_from="dense", method="copy")
    assert p["moe-long"].train.init.upcycle_from is None
    # A fresh window order for the upcycled steps (module docstring); the rest is one run's.
    assert p["upcycled"].seed == p["dense"].seed + 1 == p["moe-long"].seed + 1
    assert p["upcycled"].train.model == p["moe-long"].train.model
    assert p["dense"].train.model == p["dense-long"].train.model
    assert {a.train.max_steps for a in (p["dense"], p["upcycled"])} == {300}
    assert {a.train.max_steps for a in (p["moe-long"], p["dense-long"])} == {600}
    assert p["dense"].prepare.files.glob == "corpus/real-text/**/*.txt"  # the preset's keys
    assert upcycling.tokens_per_step(p["dense"]) == 16 * 256  # the preset's batch


def test_the_dense_arm_upcycles_into_the_moe_arm(arm_params):
    """The chosen shapes fit: upcycling arm 1's model into arm 2's refuses nothing, and with
    copy the experts are the dense MLP."""
    torch.manual_seed(0)
    dense = MoETransformer(arm_params["dense"].train.model, VOCAB)
    moe = MoETransformer(arm_params["upcycled"].train.model, VOCAB)
    upcycle_into(moe, dense, arm_params["upcycled"].train.init, 1235, "dense")
    w13 = moe.blocks[0].ffn.experts.w13
    dense_ffn = dense.blocks[0].ffn
    assert torch.equal(w13[5], torch.cat([dense_ffn.w1.weight, dense_ffn.w3.weight]))


def test_moe_flops_count_the_top_k_experts_and_the_router(arm_params):
    """The accounting the arms are matched by, against the shapes: per token and layer the MoE
    model adds (top_k - 1) dense MLPs (3 · d · F each) and the router (d · E), at 6 FLOPs per
    parameter (forward + backward); the experts a token does not visit cost nothing."""
    seq_len = arm_params["dense"].train.seq_len
    dense, dense_active = upcycling.accounting(arm_params["dense"].train.model, VOCAB, seq_len)
    cfg = arm_params["upcycled"].train.model
    moe, moe_active = upcycling.accounting(cfg, VOCAB, seq_len)
    d, f, e, k = cfg.d_model, cfg.dense_hidden, cfg.moe.num_experts, cfg.moe.top_k
    extra_per_layer = (k - 1) * 3 * d * f + d * e
    assert moe_active - dense_active == cfg.n_layers * extra_per_layer
    assert moe - dense == 6 * cfg.n_layers * extra_per_layer
    assert round(moe / dense, 2) == 1.28  # the ratio the module docstring states


def test_a_curve_is_read_at_its_points_between_them_and_nowhere_else():
    points = [(10.0, 5.0), (20.0, 4.0), (40.0, 3.0)]
    assert upcycling.value_at(points, 20.0) == (4.0, False)
    assert upcycling.value_at(points, 40.0) == (3.0, False)
    # 3 · 0.1 · 100 is not 30.0 in floats: a logged point is still found, not interpolated.
    assert upcycling.value_at([(30.0, 2.0)], 3 * 0.1 * 100) == (2.0, False)
    assert upcycling.value_at(points, 15.0) == (4.5, True)
    assert upcycling.value_at(points, 35.0) == pytest.approx((3.25, True))
    assert upcycling.value_at(points, 9.0) is None
    assert upcycling.value_at(points, 41.0) is None


def curves() -> list:
    """Four arms of 2 + 2 steps: dense steps cost 1 FLOP, MoE steps 2; the MoE from scratch
    validated at steps 2 and 4 only."""
    dense2, upcycled, moe4, dense4 = upcycling.plan(2, 2, "copy")
    curve = upcycling.Curve
    return [
        curve(dense2, 1.0, 1, 0.0, 2, [(1.0, 5.0), (2.0, 4.0)]),
        curve(upcycled, 2.0, 1, 2.0, 2, [(4.0, 3.8), (6.0, 3.6)]),
        curve(moe4, 2.0, 1, 0.0, 4, [(4.0, 4.5), (8.0, 3.5)]),
        curve(dense4, 1.0, 1, 0.0, 4, [(1.0, 5.0), (2.0, 4.2), (3.0, 3.9), (4.0, 3.7)]),
    ]


def test_the_matched_table_reads_every_curve_at_each_arms_end():
    per_token = 1 / math.log(2)  # bits per byte = loss: the cells show it twice
    lines = upcycling.matched_table(curves(), per_token).splitlines()
    assert lines[0].split(" | ")[1:3] == ["the end of", "dense, 2 steps"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert rows == [
        ["2", "dense, 2 steps", "4.0000 / 4.0000 (end)", "—", "—", "4.2000 / 4.2000"],
        ["4", "dense, 4 steps", "—", "3.8000 / 3.8000", "4.5000 / 4.5000",
         "3.7000 / 3.7000 (end)"],
        ["6", "dense 2 + upcycled (copy) 2 steps", "—", "3.6000 / 3.6000 (end)",
         "4.0000 / 4.0000 †", "—"],
        ["8", "MoE from scratch, 4 steps", "—", "—", "3.5000 / 3.5000 (end)", "—"],
    ]  # fmt: skip


TINY = ["train.model.d_model=32", "train.model.n_layers=2", "train.model.n_heads=2",
        "train.model.n_kv_heads=1", "train.model.dense_hidden=64", "train.model.max_seq_len=64",
        "train.seq_len=64", "train.micro_batch_size=8"]  # fmt: skip


def test_the_upcycled_arms_flops_axis_starts_where_the_dense_run_ends(tmp_path):
    """read_curves on an arm's files as the train stage leaves them: each validation's step
    times the trained model's FLOPs per step, after the dense run's total for the upcycled arm."""
    base = upcycling.base_settings([], TINY)
    dense_arm, upcycled_arm = upcycling.plan(3, 2, "copy")[:2]
    per_step = {}
    for arm, validated_at in ((dense_arm, [2, 3]), (upcycled_arm, [2])):
        directory = tmp_path / arm.key
        settings = upcycling.arm_settings(base, arm, "copy")
        upcycling.write_params(directory, settings)
        cfg = upcycling.validated(settings, arm.key).train.model
        save_model(MoETransformer(cfg, 50), model_identity(cfg, 50),
                   ModelFiles.in_dir(directory / "models"))  # fmt: skip
        per_step[arm.kind] = upcycling.accounting(cfg, 50, 64)[0] * 8 * 64  # 8 windows of 64
        rows = "".join(f"{step},{4 - step / 10}\n" for step in validated_at)
        (directory / "plots" / "train").mkdir(parents=True)
        (directory / "plots" / "train" / "val.csv").write_text("step,val_loss\n" + rows)
        write_json(directory / "metrics" / "train.json", {"steps": arm.steps})

    dense, upcycled = upcycling.read_curves(tmp_path, [dense_arm, upcycled_arm]).values()
    d, m = per_step["dense"], per_step["upcycled"]
    assert m > d
    assert dense.points == [(2 * d, 3.8), (3 * d, 3.7)]
    assert upcycled.offset == dense.end_flops == 3 * d
    assert upcycled.points == [(3 * d + 2 * m, 3.8)]
    assert upcycled.end_flops == pytest.approx(3 * d + 2 * m)
