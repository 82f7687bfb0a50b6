"""Routing health, its guard and the routing digest (pipeline/train/routing_health.py): the
measures on hand-made counts, the guard's patience and actions, a router forced to collapse
stopped by name (and its MLflow run failed), a healthy run left alone, and the digest's
independence from how a step's tokens are split."""

from __future__ import annotations

import logging

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from pipeline.config import RoutingGuardConfig
from pipeline.model.routing_stats import dead_fraction, max_violation, routing_hash
from pipeline.tracking import stage_run
from pipeline.train.routing_health import DIGEST_METRIC, RoutingCollapseError, RoutingGuard
from pipeline.train.trainer import train


def test_max_violation_and_dead_fraction_on_known_counts():
    assert max_violation(torch.tensor([4.0, 4.0, 4.0, 4.0])).item() == 0.0
    assert max_violation(torch.tensor([8.0, 4.0, 2.0, 2.0])).item() == 1.0  # (8 - 4) / 4
    assert max_violation(torch.tensor([8.0, 8.0, 0.0, 0.0])).item() == 1.0  # E / k - 1, k = 2
    assert max_violation(torch.zeros(4)).item() == 0.0  # a layer that routed nothing
    counts = torch.tensor([10.0, 10.0, 0.5, 0.0, 19.5, 20.0])  # mean 10
    assert dead_fraction(counts, 0.1).item() == pytest.approx(2 / 6)  # 0.5 and 0 are below 1
    assert dead_fraction(counts, 0.01).item() == pytest.approx(1 / 6)


def _rows(values: list[float], metric: str = "max_vio", every: int = 10) -> list[dict]:
    other = "dead_fraction" if metric == "max_vio" else "max_vio"
    return [
        {"step": every * (i + 1), "layer": 0, metric: v, other: 0.0} for i, v in enumerate(values)
    ]


def test_guard_waits_for_its_patience_then_warns_once_per_stretch(caplog):
    guard = RoutingGuard(RoutingGuardConfig(max_vio=1.0, patience_steps=20, action="warn"))
    history = _rows([0.5, 1.5, 1.5, 1.5, 1.5, 0.5, 1.5])  # steps 10..70; over at 20..50 and 70
    warned = []
    with caplog.at_level(logging.WARNING):
        for i in range(len(history)):
            caplog.clear()
            guard.check(history[: i + 1], history[i]["step"])
            warned += [history[i]["step"]] * len(caplog.records)
    assert warned == [40]  # 20 steps after the stretch began at step 20; once; 70 is too fresh


def test_guard_stops_naming_layer_metric_and_steps():
    guard = RoutingGuard(RoutingGuardConfig(dead_fraction=0.25, patience_steps=0, action="stop"))
    rows = _rows([0.0, 0.5], metric="dead_fraction")
    guard.check(rows[:1], 10)  # healthy: nothing happens
    with pytest.raises(RoutingCollapseError, match=r"layer 0 .*dead_fraction = 0\.5 .*step 20"):
        guard.check(rows, 20)
    RoutingGuard(RoutingGuardConfig(dead_fraction=None, max_vio=None, action="stop")).check(
        rows, 20
    )


class Collapse(Callback):
    """A router forced to collapse: the sigmoid router's selection bias sends every token to
    experts 0 and 1 of every layer from the first step, and nothing balances it (no balance
    loss, a bias update rate of 0)."""

    def on_train_start(self, trainer, pl_module):
        for layer in pl_module.model.moe_layers():
            layer.router.expert_bias.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))


COLLAPSING = {
    "model": {"moe": {"router": "sigmoid_bias", "bias_update_rate": 0.0, "aux_loss_weight": 0.0}},
    "monitor": {"log_every": 2, "val_every": 100},
    "routing_guard": {"patience_steps": 2, "action": "stop"},
}


def test_a_collapsed_router_stops_the_run_and_marks_the_mlflow_run_failed(
    tmp_path, tiny, mlflow_uri, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(**COLLAPSING)
    with (
        pytest.raises(
            RoutingCollapseError, match=r"layer 0 .*dead_fraction = 0.5 .*step 2 to step 4"
        ),
        stage_run("train", p, {}, {}, tmp_path / "run.json") as tracked,
    ):
        logger = MLFlowLogger(tracking_uri=mlflow_uri, run_id=tracked.run_id)
        train(p, paths, tiny.RUN_KEY, logger, progress_bar=False, extra_callbacks=[Collapse()])
    client = MlflowClient(mlflow_uri)
    assert client.get_run(tracked.run_id).info.status == "FAILED"
    dead = client.get_metric_history(tracked.run_id, "router/layer0/dead_fraction")
    assert [(m.step, m.value) for m in dead] == [(2, 0.5), (4, 0.5)]  # 2 of 4 experts unused
    bias = client.get_metric_history(tracked.run_id, "router/layer1/bias_range")
    assert [m.value for m in bias] == [10.0, 10.0]
    assert len(client.get_metric_history(tracked.run_id, DIGEST_METRIC)) == 2
    assert not paths.model_files.weights.exists()


def test_the_default_guard_leaves_a_healthy_run_alone_and_reports_its_health(tmp_path, tiny):
    """The tiny config with the default limits, acting by stopping: it trains to the end, and
    its final health per layer reaches metrics/train.json and the plot files."""
    paths = tiny.write_tokens(tmp_path)
    result = tiny.run(paths, tiny.params(routing_guard={"action": "stop"}))
    assert result.metrics["steps"] == 8
    health = result.history["routing"]
    assert [(r["step"], r["layer"]) for r in health] == [
        (s, n) for s in (2, 4, 6, 8) for n in (0, 1)
    ]
    limits = RoutingGuardConfig()
    assert max(r["max_vio"] for r in health) < limits.max_vio
    assert max(r["dead_fraction"] for r in health) <= limits.dead_fraction
    final = {k: v for k, v in result.metrics.items() if k.startswith("routing_health/")}
    assert final.pop("routing_health/step") == 8
    assert final == {
        f"routing_health/layer{r['layer']}/{name}": value
        for r in health[-2:]
        for name, value in r.items()
        if name not in ("step", "layer")
    }
    assert result.metrics["routing_digest"] == result.history["routing_digest"][-1]["chain"]
    from pipeline.train.outputs import write_outputs

    write_outputs(paths, result.metrics, result.history)
    routing_csv = (paths.train_plots_dir / "routing.csv").read_text().splitlines()
    assert routing_csv[0] == "step,layer,entropy,dropped_fraction,max_vio,dead_fraction"
    assert len(routing_csv) == 1 + 8
    digest_csv = (paths.train_plots_dir / "routing_digest.csv").read_text().splitlines()
    assert len(digest_csv) == 1 + 8 and digest_csv[-1].startswith("8,")


def test_routing_hash_adds_up_over_any_split_and_sees_one_changed_decision():
    g = torch.Generator().manual_seed(0)
    ids_TK = torch.randint(0, 8, (40, 2), generator=g)
    ids_TK[5, 1] = -1  # an empty slot counts for nothing
    whole = routing_hash(ids_TK, 100, 1, 3, 8)
    parts = routing_hash(ids_TK[:13], 100, 1, 3, 8) + routing_hash(ids_TK[13:], 113, 1, 3, 8)
    assert torch.equal(whole, parts)
    assert torch.equal(whole, routing_hash(ids_TK.flip(1), 100, 1, 3, 8))  # slot order
    changed = ids_TK.clone()
    changed[7, 0] = (changed[7, 0] + 1) % 8
    assert not torch.equal(whole, routing_hash(changed, 100, 1, 3, 8))
    assert not torch.equal(whole, routing_hash(ids_TK, 101, 1, 3, 8))  # other positions
    assert not torch.equal(whole, routing_hash(ids_TK, 100, 2, 3, 8))  # another layer


def test_the_card_reports_the_final_health_per_layer_and_the_digest():
    from types import SimpleNamespace

    from evaluation.card import _routing_health
    from pipeline.config import Params

    layers = {
        "layer0": {"entropy": 1.38, "dropped_fraction": 0.0, "max_vio": 0.25, "dead_fraction": 0.0},
        "layer1": {"entropy": 1.2, "dropped_fraction": 0.1, "max_vio": 1.5, "dead_fraction": 0.25},
    }
    metrics = {
        "routing_health/step": 8,
        **{
            f"routing_health/{layer}/{k}": v
            for layer, row in layers.items()
            for k, v in row.items()
        },
        "routing_digest": "bf5428924a322621",
    }
    section = _routing_health(SimpleNamespace(train_metrics=metrics, params=Params()))
    assert section.startswith("### Routing health in training (step 8)")
    assert "`bf5428924a322621`" in section
    assert "| layer | max_vio | dead_fraction | entropy | dropped_fraction |" in section
    assert "| layer1 | 1.5 | 0.25 | 1.2 | 0.1 |" in section
    assert _routing_health(SimpleNamespace(train_metrics={}, params=Params())) == ""  # older runs
