"""lm-evaluation-harness's view of the native :class:`~pipeline.model.MoETransformer`, and of
the unigram baseline that is scored through the same request path.

Subclassing ``TemplateLM`` reuses the harness's own request encoding (the context/continuation
split, the end-of-text token standing in for an empty context), so this model is scored exactly
as ``HFLM`` would score its Hugging Face export; only the three model calls are ours:

* ``_loglikelihood_tokens``: the continuation's log-probabilities summed, and whether greedy
  decoding would have produced it. Each distinct input row runs once (the one-token choices of an
  item share theirs), longest first in batches, right-padded with the end-of-text token: the
  attention is causal, so padding after a sequence cannot change its logits, and the model evaluates with dropless routing (see :func:`pipeline.model_io.load_model`),
  so padding tokens cannot take an expert slot from a real token either.
* ``loglikelihood_rolling``: the harness's disjoint rolling windows of ``max_length`` tokens
  (each token predicted once, the first conditioned on end-of-text), summed per document.
* ``generate_until``: one request at a time (the native ``generate`` takes no padding mask),
  greedy unless the task asks for sampling, cut at the first stop string or end-of-text.

:class:`UnigramLM` scores a continuation by the training split's token frequencies alone (add-one
smoothed): the strongest context-free guess, run through the harness exactly as the model is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tokenizers import Tokenizer
from tqdm import tqdm

# One scoring request: (cache key or None, context ids, continuation ids).
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]


class _TokenizerLM(TemplateLM):
    """The harness's request encoding over the project's byte-level BPE tokenizer."""

    def __init__(self, tokenizer: Tokenizer, eot_id: int):
        super().__init__()
        self._tokenizer = tokenizer
        self._eot_id = eot_id

    @property
    def eot_token_id(self) -> int:
        return self._eot_id

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs
    ) -> list[int]:
        return self._tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


class UnigramLM(_TokenizerLM):
    """Log-likelihood of a continuation = the sum of its tokens' log unigram probabilities,
    ``log((count + 1) / (total + V))`` from ``counts`` (the training tokens' histogram, ``(V,)``).
    Multiple-choice tasks only: it has no context to roll or continue."""

    def __init__(self, counts: np.ndarray, tokenizer: Tokenizer, eot_id: int):
        super().__init__(tokenizer, eot_id)
        counts = np.asarray(counts, dtype=np.float64)
        self._log_probs = np.log((counts + 1) / (counts.sum() + len(counts)))
        self._most_likely = int(np.argmax(counts))

    def _loglikelihood_tokens(self, requests: list[TokenRequest], disable_tqdm: bool = False):
        results = []
        for key, _, continuation in requests:
            logprob = float(self._log_probs[continuation].sum())
            result = (logprob, all(t == self._most_likely for t in continuation))
            results.append(result)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the unigram baseline scores multiple-choice tasks only")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the unigram baseline scores multiple-choice tasks only")


class NativeLM(_TokenizerLM):
    """Wraps a model whose ``forward(idx).logits`` is ``(B, T, V)`` and which has ``generate``."""

    max_gen_toks = 256  # the harness's default for generation tasks that set no limit

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        eot_id: int,
        max_length: int,
        batch_size: int = 16,
        seed: int = 0,
    ):
        super().__init__(tokenizer, eot_id)
        self.model = model.eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._device = next(model.parameters()).device
        self._generator = torch.Generator(device=self._device).manual_seed(seed)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """One forward per distinct input row (:meth:`_input_row`), longest first: the choices of
        a multiple-choice item that are one token long (a name, a number) share their row, the
        context, so an item of four such choices costs one forward, not four."""
        readers: dict[tuple[int, ...], list[int]] = {}
        for index, (_, context, continuation) in enumerate(requests):
            readers.setdefault(self._input_row(context, continuation), []).append(index)
        distinct = sorted(readers, key=len, reverse=True)
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        for start in tqdm(
            range(0, len(distinct), self.batch_size), desc="loglikelihood", disable=disable_tqdm
        ):
            rows = distinct[start : start + self.batch_size]
            logprobs_BTV = self._logprobs(rows)
            for b, row in enumerate(rows):
                for i in readers[row]:
                    results[i] = _score(logprobs_BTV[b, : len(row)], requests[i][2])
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def _input_row(self, context: list[int], continuation: list[int]) -> tuple[int, ...]:
        """The model's input for one request: the last ``max_length`` tokens of context +
        continuation minus the final token; the continuation's targets are its last
        ``len(continuation)`` positions."""
        if len(continuation) > self.max_length:
            raise ValueError(
                f"continuation of {len(continuation)} tokens exceeds the model's "
                f"{self.max_length}-token context"
            )
        return tuple((context + continuation)[-(self.max_length + 1) :][:-1])

    def _logprobs(self, rows: list[tuple[int, ...]]) -> torch.Tensor:
        """Log-probabilities ``(B, T, V)`` of right-padded ``rows``."""
        batch = torch.full((len(rows), max(map(len, rows))), self._eot_id, dtype=torch.long)
        for b, row in enumerate(rows):
            batch[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return self.model(batch.to(self._device)).logits.float().log_softmax(-1)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows: list[TokenRequest] = []
        owner: list[int] = []
        for index, request in enumerate(requests):
            (text,) = request.args
            rolling = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owner.append(index)
        scored = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, scored, strict=True):
            totals[index] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tok_decode([self._eot_id])
        outputs = []
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            text = self.generate_text(
                context,
                max_new_tokens=kwargs["max_gen_toks"],
                temperature=kwargs.get("temperature", 0.0) if kwargs.get("do_sample") else 0.0,
                top_k=kwargs.get("top_k"),
            )
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    def generate_text(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None = None,
    ) -> str:
        """Continue ``prompt``; ``temperature == 0`` is greedy (top-1). Stops at end-of-text.

        Sampling draws from ``generator`` (default: the adapter's, seeded at construction)."""
        ids = self.tok_encode(prompt)[-self.max_length :] or [self._eot_id]
        idx = torch.tensor([ids], dtype=torch.long, device=self._device)
        greedy = temperature == 0
        out = self.model.generate(
            idx,
            max_new_tokens,
            temperature=1.0 if greedy else temperature,
            top_k=1 if greedy else top_k,
            generator=generator or self._generator,
        )
        new = out[0, len(ids) :].tolist()
        if self._eot_id in new:
            new = new[: new.index(self._eot_id)]
        return self.tok_decode(new)


def _score(logprobs_TV: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """The continuation's summed log-probability at the last ``len(continuation)`` positions of
    its row's ``logprobs_TV``, and whether greedy decoding would have produced it."""
    if not continuation:
        return 0.0, True
    positions_CV = logprobs_TV[-len(continuation) :]
    target_C = torch.tensor(continuation, device=positions_CV.device)
    picked_C = positions_CV.gather(-1, target_C[:, None]).squeeze(-1)
    return picked_C.double().sum().item(), bool((positions_CV.argmax(-1) == target_C).all())
