"""The lm-eval adapter against direct, one-token-at-a-time computations on a tiny random model."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from evaluation.lm_adapter import NativeLM

MAX_LEN = 32  # the tiny model's max_seq_len
TOL = {"rel": 1e-5, "abs": 1e-5}
PAIRS = [
    ("Mia gave the ball to", " Tom."),
    ("", "The dogs run home."),  # empty context: conditioned on end-of-text
    ("Tom had 3 apples. Now he has", " 2 apples."),
    ("The keys under the bench", " are rusty."),
    ("A", " b"),
]


@pytest.fixture
def lm(model, tokenizer) -> NativeLM:
    eot = tokenizer.token_to_id("<|endoftext|>")
    return NativeLM(model, tokenizer, eot, MAX_LEN, batch_size=2, seed=0)


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@torch.no_grad()
def next_logprobs(model, prefix: list[int]) -> torch.Tensor:
    """log p(next token | prefix), one unpadded sequence of at most MAX_LEN tokens."""
    return model(torch.tensor([prefix[-MAX_LEN:]])).logits[0, -1].double().log_softmax(-1)


def split_ids(lm: NativeLM, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's split: encode context and context + continuation, continuation = the rest."""
    if not context:
        return [lm.eot_token_id], lm.tok_encode(continuation)
    context_ids = lm.tok_encode(context)
    return context_ids, lm.tok_encode(context + continuation)[len(context_ids) :]


def test_loglikelihood_equals_direct_computation(lm, model):
    results = lm.loglikelihood([request("loglikelihood", c, x) for c, x in PAIRS])
    for (context, continuation), (logprob, _) in zip(PAIRS, results, strict=True):
        ctx, cont = split_ids(lm, context, continuation)
        assert len(ctx + cont) <= MAX_LEN + 1  # one window: the context is never cut
        direct = sum(next_logprobs(model, ctx + cont[:j])[cont[j]].item() for j in range(len(cont)))
        assert logprob == pytest.approx(direct, **TOL)


def test_is_greedy_only_for_the_argmax_continuation(lm, model):
    context = lm.tok_encode("Once upon a time")
    greedy: list[int] = []
    for _ in range(4):
        greedy.append(int(next_logprobs(model, context + greedy).argmax()))
    other = [*greedy[:-1], (greedy[-1] + 1) % model.vocab_size]
    scored = lm._loglikelihood_tokens([(None, context, greedy), (None, context, other)])
    assert [is_greedy for _, is_greedy in scored] == [True, False]


def test_one_token_choices_share_one_forward_and_score_as_if_alone(lm, model, monkeypatch):
    context = lm.tok_encode("Now the ball is with")
    choices = [[t] for t in (5, 17, 42, 99)]  # four one-token choices of one item
    other = (None, lm.tok_encode("The dogs"), lm.tok_encode(" run home."))
    forwards = []
    monkeypatch.setattr(model, "forward", _counting(model.forward, forwards))
    scored = lm._loglikelihood_tokens([(None, context, c) for c in choices] + [other])
    assert sum(forwards) == 2  # the shared context's row once, the other request's once
    logprobs = next_logprobs(model, context)
    for choice, (logprob, _) in zip(choices, scored[:-1], strict=True):
        assert logprob == pytest.approx(logprobs[choice[0]].item(), **TOL)
    _, ctx, cont = other  # the request in the other row of the batch
    direct = sum(next_logprobs(model, ctx + cont[:j])[cont[j]].item() for j in range(len(cont)))
    assert scored[-1][0] == pytest.approx(direct, **TOL)


def _counting(forward, rows: list[int]):
    def counted(idx, *args, **kwargs):
        rows.append(idx.shape[0])
        return forward(idx, *args, **kwargs)

    return counted


def test_long_context_keeps_its_last_tokens(lm):
    """A context beyond the window is cut from the left: same score as the cut context."""
    context = lm.tok_encode("Mia and Tom were playing in the park. " * 6)
    cont = lm.tok_encode(" Mia found a red ball.")
    assert len(context) + len(cont) > MAX_LEN + 1
    kept = context[-(MAX_LEN + 1 - len(cont)) :]
    full, cut = lm._loglikelihood_tokens([(None, context, cont), (None, kept, cont)])
    assert full[0] == pytest.approx(cut[0], **TOL)


def test_rolling_loglikelihood_is_the_sum_of_token_logprobs(lm, model):
    """Each token predicted once; a window of MAX_LEN tokens each, the first conditioned on
    end-of-text, the last window with a full context (lm-eval's rolling semantics)."""
    text = "Tom had 3 red boxes. He gave one to Ana. Now he has 2 red boxes. " * 4
    ids = lm.tok_encode(text)
    assert len(ids) > 2 * MAX_LEN  # several windows, the last one partial
    full = [lm.eot_token_id, *ids]  # ids[j] is full[j + 1]
    direct = 0.0
    for start in range(0, len(ids), MAX_LEN):
        end = min(start + MAX_LEN, len(ids))
        inputs = full[max(0, end - MAX_LEN) : end]
        with torch.no_grad():
            logprobs = model(torch.tensor([inputs])).logits[0].double().log_softmax(-1)
        targets = torch.tensor(full[max(0, end - MAX_LEN) + 1 : end + 1])
        picked = logprobs.gather(-1, targets[:, None]).squeeze(-1)
        direct += picked[-(end - start) :].sum().item()
    (rolling,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert rolling == pytest.approx(direct, **TOL)


def test_greedy_generation_is_the_argmax_path(lm, model):
    prompt = "Once upon a time"
    ids = lm.tok_encode(prompt)
    for _ in range(12):
        ids.append(int(next_logprobs(model, ids).argmax()))
    new = ids[len(lm.tok_encode(prompt)) :]
    if lm.eot_token_id in new:
        new = new[: new.index(lm.eot_token_id)]
    assert lm.generate_text(prompt, 12, temperature=0.0, top_k=None) == lm.tok_decode(new)


def test_generate_until_stops_at_the_stop_string(lm):
    free = lm.generate_text("Mia said", 20, temperature=0.0, top_k=None)
    assert len(free) >= 8, free
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    args = {"until": [stop], "max_gen_toks": 20, "do_sample": False}
    (text,) = lm.generate_until([request("generate_until", "Mia said", args)])
    assert text == free.split(stop)[0] and stop not in text


def test_sampling_is_seeded(model, tokenizer):
    eot = tokenizer.token_to_id("<|endoftext|>")
    texts = [
        NativeLM(model, tokenizer, eot, MAX_LEN, seed=3).generate_text("Tom", 10, 1.0, 20)
        for _ in range(2)
    ]
    assert texts[0] == texts[1]
