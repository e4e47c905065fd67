"""Option scoring by log-likelihood, through lm-evaluation-harness.

Multiple-choice and label benchmarks are scored by lm-eval itself (Gao et al. 2021, "A
framework for few-shot language model evaluation"): each option is a continuation of the
prompt, its score the summed log-probability of its tokens, the prediction the best one;
``acc_norm`` divides by the option's length in characters. fedlm hands lm-eval's ``HFLM``
the model it already holds (base + adapter, or merged), so nothing is downloaded and the
numbers are the ones ``lm_eval --model hf`` gives for the same weights and task YAMLs
(:mod:`fedlm.eval.lm_tasks`).

Speed comes from lm-eval's batching: requests run longest first, ``batch_size`` rows per
forward pass, and options that differ only in their last token (the letters A-D, yes/no)
share one row, so an MMLU item costs one forward pass, not four. fedlm adds one thing:
``logits_to_keep`` asks the model for the logits of the positions lm-eval reads, not of
the whole prompt; the vocabulary projection and lm-eval's log-softmax over the rest are
skipped (``trim_logits``; the tests check the scores are unchanged).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console

from fedlm.errors import DataError, ModelError
from fedlm.eval.items import PUBMEDQA_LABELS
from fedlm.eval.lm_progress import quiet_lm_eval
from fedlm.eval.lm_tasks import TaskSet


@dataclass(frozen=True)
class ItemScore:
    """lm-eval's scores of one item.

    Attributes:
        task: the lm-eval task it belongs to.
        index: its position in the task's documents (lm-eval's ``doc_id``).
        choices: the options as scored (continuations, delimiter stripped).
        gold: index of the right option.
        loglikelihoods: summed log-probability of each option, in nats.
        hit_norm: lm-eval's ``acc_norm`` for the item (character-normalised argmax is gold).
    """

    task: str
    index: int
    choices: tuple[str, ...]
    gold: int
    loglikelihoods: tuple[float, ...]
    hit_norm: bool

    @property
    def pred(self) -> int:
        """The best option; the first on ties (lm-eval's ``np.argmax``)."""
        return max(range(len(self.loglikelihoods)), key=self.loglikelihoods.__getitem__)

    @property
    def hit(self) -> bool:
        return self.pred == self.gold

    @property
    def gold_prob(self) -> float:
        """The softmax over the options' log-likelihoods, at the right option."""
        return torch.softmax(torch.tensor(self.loglikelihoods, dtype=torch.float64), 0)[
            self.gold
        ].item()


def make_lm(
    model: torch.nn.Module,
    tokenizer,
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    trim_logits: bool = True,
):
    """lm-eval's ``HFLM`` around ``model`` (a transformers causal LM, PEFT-wrapped or not).

    Args:
        model: the model object; lm-eval puts it in eval mode.
        tokenizer: its tokenizer (a transformers tokenizer).
        batch_size: rows per forward pass.
        max_length: longest sequence; longer contexts lose tokens from the left (lm-eval's
            rule). Defaults to the model's ``max_position_embeddings``.
        trim_logits: compute logits only where lm-eval reads them (see the module docstring).

    Raises:
        ModelError: the model is not a transformers model lm-eval can drive.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if not hasattr(model, "config") or not hasattr(model, "device"):
        raise ModelError(
            f"lm-eval scores transformers models; got {type(model).__name__} without "
            "config/device. Load it with fedlm.models.load_base_model or from an HF directory"
        )
    return _lm_class()(model, tokenizer, batch_size=batch_size, max_length=max_length,
                       trim_logits=trim_logits)


def score_tasks(
    model: torch.nn.Module,
    tokenizer,
    task_set: TaskSet,
    *,
    batch_size: int = 8,
    chat: bool = False,
    max_items: int | None = None,
    max_length: int | None = None,
    trim_logits: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> list[ItemScore]:
    """Score the tasks of ``task_set`` with lm-eval; one :class:`ItemScore` per item.

    Args:
        model, tokenizer: as for :func:`make_lm`.
        task_set: tasks written by :func:`fedlm.eval.lm_tasks.write_tasks`.
        batch_size, max_length, trim_logits: as for :func:`make_lm`.
        chat: apply the tokenizer's chat template (lm-eval's ``apply_chat_template``;
            the option then follows the assistant turn without a leading space).
        max_items: at most this many items, evenly spaced over all tasks (:func:`subsample`).
        progress: draw a progress bar with an ETA and summarise warnings.
        console: where to draw (a stderr console by default); pass the caller's own so the
            bar nests in its live display.

    Returns:
        Items in task order, then document order.

    Raises:
        DataError: lm-eval reads a different number of items than fedlm's loader.
    """
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    if chat and not getattr(tokenizer, "chat_template", None):
        raise DataError("chat=True needs a tokenizer with a chat template; use chat=False")
    samples = lm_eval_samples(task_set, max_items)
    names = list(samples) if samples is not None else list(task_set.tasks)
    was_training = model.training
    try:
        with quiet_lm_eval(show=progress, console=console, label=task_set.benchmark):
            manager = TaskManager(include_path=str(task_set.include_path), include_defaults=False)
            tasks = manager.load(names)
            _check_counts(tasks["tasks"], task_set)
            for task in tasks["tasks"].values():
                if task.get_config("num_fewshot") is None:  # as lm-eval's simple_evaluate
                    task.set_config(key="num_fewshot", value=0)
            lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length,
                         trim_logits=trim_logits)
            out = evaluator.evaluate(lm, tasks, samples=samples, bootstrap_iters=0,
                                     log_samples=True, apply_chat_template=chat)
    finally:
        model.train(was_training)
    return [_item(name, s) for name in names for s in sorted(out["samples"][name],
                                                             key=lambda s: s["doc_id"])]


def mc_metrics(scores: Sequence[ItemScore], task_set: TaskSet) -> dict:
    """``{"accuracy", "acc_norm", "gold_prob", "count", "subjects": {label: {"accuracy",
    "count"}}}``; accuracies are fractions in [0, 1], means over items (lm-eval's group
    ``acc`` with ``weight_by_size``)."""
    label = dict(zip(task_set.tasks, task_set.labels))
    per: dict[str, list[bool]] = {}
    for s in scores:
        per.setdefault(label[s.task], []).append(s.hit)
    return {
        "accuracy": _mean([s.hit for s in scores]),
        "acc_norm": _mean([s.hit_norm for s in scores]),
        "gold_prob": _mean([s.gold_prob for s in scores]),
        "count": len(scores),
        "subjects": {k: {"accuracy": _mean(v), "count": len(v)} for k, v in sorted(per.items())},
    }


def label_metrics(scores: Sequence[ItemScore], *, labels: Sequence[str] = PUBMEDQA_LABELS) -> dict:
    """``{"accuracy", "acc_norm", "macro_f1", "gold_prob", "count", "predicted": {label: n}}``;
    ``macro_f1`` uses the summed-log-likelihood predictions."""
    gold = [s.choices[s.gold] for s in scores]
    pred = [s.choices[s.pred] for s in scores]
    counts = Counter(pred)
    return {
        "accuracy": _mean([s.hit for s in scores]),
        "acc_norm": _mean([s.hit_norm for s in scores]),
        "macro_f1": macro_f1(gold, pred, labels=labels),
        "gold_prob": _mean([s.gold_prob for s in scores]),
        "count": len(scores),
        "predicted": {label: counts.get(label, 0) for label in labels},
    }


def macro_f1(gold: Sequence[str], pred: Sequence[str], *, labels: Sequence[str]) -> float:
    """Unweighted mean over labels of per-label F1 = 2TP / (2TP + FP + FN).

    A label that is neither gold nor predicted anywhere (TP + FP + FN = 0) is left out of
    the mean rather than counted as 0 or 1; with no scorable label the result is NaN.
    """
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else float("nan")


def subsample(items: Sequence, max_items: int | None) -> list:
    """At most ``max_items`` items, evenly spaced over the list (deterministic).

    Even spacing keeps every subject of a file-ordered benchmark represented, which taking
    the first ``max_items`` (lm-eval's ``--limit``) would not.
    """
    items = list(items)
    if max_items is None or max_items >= len(items):
        return items
    if max_items < 1:
        raise DataError(f"max_items must be >= 1 or None, got {max_items}")
    return [items[i * len(items) // max_items] for i in range(max_items)]


def lm_eval_samples(task_set: TaskSet, max_items: int | None) -> dict[str, list[int]] | None:
    """lm-eval's ``samples`` (indices per task; the CLI's ``--samples``) for an evenly spaced
    subset of ``max_items`` over all tasks, or None for all items."""
    if max_items is None or max_items >= task_set.total:
        return None
    every = [(t, i) for t, n in zip(task_set.tasks, task_set.counts) for i in range(n)]
    chosen: dict[str, list[int]] = {}
    for task, index in subsample(every, max_items):
        chosen.setdefault(task, []).append(index)
    return chosen


# ---------------------------------------------------------------------------- internals


@functools.cache
def _lm_class() -> type:
    """``FedlmLM``, built on first use: importing lm-eval takes seconds, and most fedlm
    commands never score a benchmark."""
    from lm_eval.models.huggingface import HFLM

    class FedlmLM(HFLM):
        """``HFLM`` over a model object, asking it only for the logits lm-eval reads."""

        def __init__(self, model, tokenizer, *, batch_size: int, max_length: int | None,
                     trim_logits: bool) -> None:
            super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                             max_length=max_length)
            self._trim = trim_logits and _accepts_logits_to_keep(model)
            self._max_cont: int | None = None

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                                  override_bs: int | None = None):
            # requests: ((context, continuation), context ids, continuation ids)
            self._max_cont = max((len(r[2]) for r in requests), default=1)
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            finally:
                self._max_cont = None

        def _model_call(self, inps, attn_mask=None, labels=None):
            if (not self._trim or self._max_cont is None or attn_mask is not None
                    or labels is not None or self.mixed_precision_dtype is not None):
                return super()._model_call(inps, attn_mask, labels)
            keep = logits_needed(inps, self._max_cont)
            with torch.no_grad():
                return self.model(inps, logits_to_keep=keep).logits  # (B, keep, V)

    return FedlmLM


def logits_needed(inps: torch.Tensor, max_cont: int) -> int:
    """How many trailing positions of a right-padded (B, T) batch lm-eval reads.

    Row r is read at [len_r - cont_r, len_r). lm-eval pads with id 0, so the last non-zero
    id bounds each length from below (a real trailing id 0 only makes the bound smaller,
    keeping more positions); ``max_cont`` bounds every continuation from above. lm-eval
    places shorter logits by their offset from the end, so the last ``T - start`` suffice.
    """
    T = inps.shape[1]
    positions = torch.arange(1, T + 1, device=inps.device)
    lengths = ((inps != 0) * positions).amax(dim=1)  # (B,): last non-zero position + 1
    start = max(0, int(lengths.min()) - max_cont)
    return T - start


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _check_counts(tasks: dict[str, Any], task_set: TaskSet) -> None:
    expected = dict(zip(task_set.tasks, task_set.counts))
    for name, task in tasks.items():
        if len(task.eval_docs) != expected[name]:
            raise DataError(
                f"lm-eval task {name} reads {len(task.eval_docs)} items but fedlm's loader "
                f"reads {expected[name]} from the same file; the two disagree on which rows "
                "to keep (see fedlm/eval/tasks/docs.py)"
            )


def _item(task: str, sample: dict) -> ItemScore:
    choices = tuple(cont.strip() for _, cont in sample["arguments"])
    target = sample["target"]
    gold = choices.index(target) if isinstance(target, str) else int(target)
    lls = tuple(float(r[0]) for r in sample["filtered_resps"])  # (loglikelihood, is_greedy)
    return ItemScore(task, int(sample["doc_id"]), choices, gold, lls, bool(sample["acc_norm"]))


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


__all__ = [
    "ItemScore",
    "label_metrics",
    "lm_eval_samples",
    "logits_needed",
    "macro_f1",
    "make_lm",
    "mc_metrics",
    "score_tasks",
    "subsample",
]
