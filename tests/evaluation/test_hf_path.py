"""``evaluate.model: hf``: lm-eval's own ``HFLM`` on the exported directory scores like the native
adapter on the project's model: the same log-likelihoods request by request, the same task
scores, and a damaged export is refused before any scoring."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance

from evaluation.harness import run_harness
from evaluation.hf_lm import load_hf_lm
from evaluation.lm_adapter import NativeLM
from evaluation.standard_tasks import StandardTasks
from pipeline.config import LOCAL_TASKS
from pipeline.data.shards import read_manifest
from pipeline.export.architectures import ExportError
from pipeline.export.hf_dir import WEIGHTS, write_export
from pipeline.paths import Paths

from .test_harness import right_answers

# Summed log-probabilities of a few tokens through two fp32 implementations (see
# tests/export: logits agree to ~1e-6), after a log-softmax over the vocabulary.
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def lms(data_root, model, tokenizer, tmp_path_factory):
    paths = Paths(root=data_root)
    out = tmp_path_factory.mktemp("hf-path") / "hf"
    write_export(model, paths.tokenizer_dir, out, "float32")
    eot = read_manifest(paths.token_split("test")).eot_id
    native = NativeLM(model, tokenizer, eot, model.cfg.max_seq_len, batch_size=4)
    return native, load_hf_lm(out, batch_size=4), out


def requests(pairs, kind="loglikelihood"):
    return [Instance(kind, {}, args, i) for i, args in enumerate(pairs)]


def test_loglikelihoods_match_request_by_request(lms, data_root):
    native, hf, _ = lms
    assert hf.max_length == native.max_length and hf.eot_token_id == native.eot_token_id
    pairs = sorted(right_answers(data_root))[:24]
    ours = native.loglikelihood(requests(pairs))
    theirs = hf.loglikelihood(requests(pairs))
    for (ll, greedy), (hf_ll, hf_greedy) in zip(ours, theirs, strict=True):
        assert hf_ll == pytest.approx(ll, abs=LOGPROB_ATOL) and hf_greedy == greedy


def test_rolling_loglikelihoods_match_beyond_one_window(lms):
    native, hf, _ = lms
    text = "Once upon a time, Tom had 3 red apples and a ball. " * 6  # several windows
    ours = native.loglikelihood_rolling(requests([(text,)], "loglikelihood_rolling"))
    theirs = hf.loglikelihood_rolling(requests([(text,)], "loglikelihood_rolling"))
    assert theirs[0] == pytest.approx(ours[0], abs=LOGPROB_ATOL)


def test_task_scores_match_the_native_adapter(lms, data_root):
    native, hf, _ = lms
    benchmark = Paths(root=data_root).benchmark
    ours = run_harness(native, list(LOCAL_TASKS), StandardTasks(), benchmark, None, 0)
    theirs = run_harness(hf, list(LOCAL_TASKS), StandardTasks(), benchmark, None, 0)
    assert theirs.keys() == ours.keys()
    assert theirs == pytest.approx(ours, abs=1e-9)


def test_a_damaged_export_is_refused_before_loading(lms, tmp_path):
    _, _, out = lms
    broken = tmp_path / "hf"
    broken.mkdir()
    for path in out.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / WEIGHTS).write_bytes((out / WEIGHTS).read_bytes()[:-100])
    with pytest.raises(ExportError, match="truncated or corrupted"):
        load_hf_lm(broken, batch_size=4)
