"""Privacy audit of a trained model: canary exposure and loss-based membership inference.

Two empirical measures of what a (federated) model memorised, reported next to the
formal epsilon of DP so that a run shows both the bound and what an attacker sees:

* Exposure (Carlini et al. 2019, "The Secret Sharer"): how much more likely the model
  finds a planted canary than random secrets of the same format. Canaries are made and
  planted by ``fedlm.privacy.canaries``.
* Membership inference by loss (Yeom et al. 2018, "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting"): predict "member" when an example's loss is
  low; the AUC of that attack over training vs held-out examples. 0.5 = no signal.

How exposure is computed here:

* Score: the log-perplexity of the WHOLE canary sentence, ``-sum_t log p(x_t | x_<t)`` in
  nats over every token of the sentence, each sentence preceded by the tokenizer's EOS
  (the separator ``chunk_lm`` puts between training texts). For a causal model the prefix
  tokens get the same probability whatever the secret, so this ranks candidates exactly
  as scoring the secret alone would, and it needs no token boundary between prefix and
  secret (a BPE tokenizer may merge the space before the secret into the secret's token).
* Rank: 1 + the number of candidates with a strictly lower score + half the number with
  an equal score (mid-rank, so ties favour neither side). Rank 1 = most likely.
* Candidates: ``candidates`` secrets drawn uniformly without replacement from the
  canary's format, excluding the planted secrets. With R the candidates plus the true
  secret, exposure = log2(|R|) - log2(rank), so it is estimated from the rank among the
  SAMPLED candidates: 0 when the canary is the least likely, at most
  log2(candidates + 1) when it is the most likely. Carlini et al.'s extrapolation past
  that ceiling (fitting a skew-normal to the scores, section 4.3) is not done here;
  raise ``candidates`` to measure larger exposures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedlm.data.formatting import IGNORE, Example, collate
from fedlm.errors import ConfigError, DataError
from fedlm.models.device import module_device, to_device
from fedlm.privacy.canaries import Canary, canary_placement, sample_candidates

ScoreFn = Callable[[Sequence[str]], np.ndarray]  # texts -> log-perplexity (nats), shape (N,)


@dataclass(frozen=True)
class CanaryScore:
    """One canary's audit result.

    Attributes:
        exposure: log2(candidates + 1) - log2(rank), in bits.
        rank: mid-rank of the canary among candidates + itself (1 = most likely).
        log_perplexity: the canary sentence's summed token NLL (nats).
        candidates: how many random secrets it was ranked against.
    """

    exposure: float
    rank: float
    log_perplexity: float
    candidates: int


# ---------------------------------------------------------------------------------------
# Scoring: summed and mean token NLL, batched, no gradients.


@torch.no_grad()
def _token_nll(model: torch.nn.Module, batch: Sequence[Example], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (nats) and the mask of scored tokens, each (B, T-1)."""
    cols = to_device(collate(batch, pad_id=pad_id), module_device(model))
    logits = model(input_ids=cols["input_ids"], attention_mask=cols["attention_mask"]).logits
    logits, targets = logits[:, :-1].float(), cols["labels"][:, 1:]  # (B, T-1, V), (B, T-1)
    keep = targets != IGNORE
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.clamp_min(0).reshape(-1),  # ignored slots get a dummy target, masked below
        reduction="none",
    ).view(targets.shape)
    return (nll * keep).cpu(), keep.cpu()


def _batched(model: torch.nn.Module, examples: Sequence[Example], *, pad_id: int, batch_size: int, mean: bool) -> np.ndarray:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(examples), batch_size):
            nll, keep = _token_nll(model, examples[start : start + batch_size], pad_id=pad_id)
            total, count = nll.sum(1), keep.sum(1)  # (B,), (B,)
            if mean and bool((count == 0).any()):
                bad = start + int((count == 0).nonzero()[0, 0])
                raise DataError(
                    f"example {bad} has no labelled token after the first position; "
                    "drop examples whose labels are all -100"
                )
            out.append((total / count if mean else total).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def sequence_nll(model: torch.nn.Module, sequences: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 32) -> np.ndarray:
    """Summed NLL (nats) of tokens 1..T-1 of each token sequence given the ones before.

    Returns:
        float64 array of shape (N,).
    """
    examples = [{"input_ids": list(s), "labels": list(s)} for s in sequences]
    return _batched(model, examples, pad_id=pad_id, batch_size=batch_size, mean=False)


def text_log_perplexity(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """Log-perplexity (summed token NLL, nats) of each whole text after a leading EOS."""
    start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    lead = [start] if start is not None else []
    seqs = [lead + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (start or 0)
    return sequence_nll(model, seqs, pad_id=pad, batch_size=batch_size)


def loss_scores(model: torch.nn.Module, examples: Sequence[Example], *, pad_id: int, batch_size: int = 32) -> np.ndarray:
    """Per-example mean token loss (nats) over labelled tokens, as in ``score_lm``.

    This is the membership score of Yeom et al. 2018: lower loss suggests "member".

    Raises:
        DataError: an example has no labelled token to score.
    """
    return _batched(model, examples, pad_id=pad_id, batch_size=batch_size, mean=True)


# ---------------------------------------------------------------------------------------
# Exposure (Carlini et al. 2019).


def canary_rank(canary_score: float, candidate_scores: np.ndarray) -> float:
    """Mid-rank of the canary (lower score = more likely = better rank), 1-based.

    ``1 + #(candidates < canary) + #(candidates == canary) / 2``.
    """
    scores = np.asarray(candidate_scores, dtype=np.float64)
    if np.isnan(canary_score) or np.isnan(scores).any():
        raise DataError("a log-perplexity is NaN; the model produced non-finite logits")
    lower = int((scores < canary_score).sum())
    ties = int((scores == canary_score).sum())
    return 1.0 + lower + 0.5 * ties


def exposure_from_rank(rank: float, total: int) -> float:
    """Exposure in bits, ``log2(total) - log2(rank)``; ``total`` = candidates + 1."""
    if total < 1 or not 1.0 <= rank <= total:
        raise ConfigError(f"rank must be in [1, total={total}], got {rank!r}")
    return math.log2(total) - math.log2(rank)


def score_canary(
    model: torch.nn.Module | None,
    tokenizer,
    canary: Canary,
    *,
    candidates: int,
    seed: int | Sequence[int],
    batch_size: int = 32,
    exclude: Collection[str] = (),
    score_fn: ScoreFn | None = None,
) -> CanaryScore:
    """Rank one canary among ``candidates`` random secrets of its format.

    Args:
        model: a causal LM returning ``.logits`` (e.g. ``AdaptedModel.model``).
        tokenizer: its tokenizer.
        canary: the planted canary.
        candidates: random secrets to rank against (the ceiling is log2(candidates + 1)).
        seed: fixes the candidates.
        batch_size: sentences scored per forward pass.
        exclude: other planted secrets, kept out of the candidates.
        score_fn: texts -> log-perplexity; replaces the model (then ``model`` and
            ``tokenizer`` are unused and may be None).
    """
    pool = sample_candidates(canary, candidates, seed=seed, exclude=exclude)
    texts = [canary.text, *(canary.with_secret(s) for s in pool)]
    if score_fn is None:
        if model is None or tokenizer is None:
            raise ConfigError("score_canary needs a model and tokenizer, or a score_fn")
        scores = text_log_perplexity(model, tokenizer, texts, batch_size=batch_size)
    else:
        scores = np.asarray(score_fn(texts), dtype=np.float64)
        if scores.shape != (len(texts),):
            raise ConfigError(f"score_fn must return shape ({len(texts)},), got {scores.shape}")
    rank = canary_rank(float(scores[0]), scores[1:])
    return CanaryScore(exposure_from_rank(rank, candidates + 1), rank, float(scores[0]), candidates)


def exposure(
    model: torch.nn.Module | None,
    tokenizer,
    canary: Canary,
    *,
    candidates: int,
    seed: int | Sequence[int],
    batch_size: int = 32,
    exclude: Collection[str] = (),
    score_fn: ScoreFn | None = None,
) -> float:
    """Exposure of ``canary`` in bits (Carlini et al. 2019); see ``score_canary``."""
    return score_canary(
        model, tokenizer, canary, candidates=candidates, seed=seed, batch_size=batch_size,
        exclude=exclude, score_fn=score_fn,
    ).exposure


# ---------------------------------------------------------------------------------------
# Membership inference (Yeom et al. 2018).


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ascending ranks, tied values sharing the mean of their positions."""
    order = np.argsort(values, kind="mergesort")
    _, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # 0-based start of each tie group
    mean_rank = first + (counts + 1) / 2.0  # (U,)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def mia_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the attack "member if the loss is low" (Yeom et al. 2018).

    Equals P(member loss < non-member loss) + P(equal) / 2, the Mann-Whitney U statistic of
    the non-members' (higher) losses over all pairs: with ascending mid-ranks r,
    ``U = sum(r[non-members]) - n0 (n0 + 1) / 2`` and ``AUC = U / (n0 n1)``.

    Raises:
        DataError: either side is empty or holds NaN.
    """
    m = np.asarray(member_losses, dtype=np.float64).ravel()
    n = np.asarray(nonmember_losses, dtype=np.float64).ravel()
    if m.size == 0 or n.size == 0:
        raise DataError(f"mia_auc needs members and non-members, got {m.size} and {n.size}")
    if np.isnan(m).any() or np.isnan(n).any():
        raise DataError("mia_auc got a NaN loss; score only examples with labelled tokens")
    ranks = _average_ranks(np.concatenate([m, n]))
    u = ranks[m.size :].sum() - n.size * (n.size + 1) / 2.0
    return float(u / (m.size * n.size))


# ---------------------------------------------------------------------------------------
# The whole audit.


def _cap(examples: Sequence[Example], limit: int | None, rng: np.random.Generator) -> list[Example]:
    if limit is None or len(examples) <= limit:
        return list(examples)
    keep = np.sort(rng.choice(len(examples), size=limit, replace=False))
    return [examples[i] for i in keep]


def run_audit(
    model: torch.nn.Module,
    tokenizer,
    *,
    canaries: Sequence[Canary],
    members: Sequence[Example],
    nonmembers: Sequence[Example],
    candidates: int,
    seed: int,
    batch_size: int = 32,
    mia_examples: int | None = None,
    canary_clients: Sequence[str] | None = None,
    score_fn: ScoreFn | None = None,
) -> dict:
    """Exposure of every canary and the loss-based MIA AUC, as a JSON-ready dict.

    Args:
        model: the trained causal LM (e.g. ``AdaptedModel.model`` with the final adapter).
        tokenizer: its tokenizer (its ``pad_token_id`` pads MIA batches).
        canaries: the planted canaries (may be empty).
        members: training examples; ``nonmembers``: held-out examples (either may be
            empty, then ``mia_auc`` is None).
        candidates: random secrets per canary.
        seed: fixes candidates (canary ``i`` uses ``[seed, i]``) and MIA subsampling.
        mia_examples: score at most this many members and this many non-members.
        canary_clients: the ``clients`` given to ``insert_canaries``; labels each canary
            with the client that held it.

    Returns:
        ``{"canaries": [{"index", "secret", "client", "exposure", "rank",
        "log_perplexity"}], "exposure_mean", "exposure_max", "exposure_ceiling",
        "candidates", "mia_auc", "members", "nonmembers", "member_loss",
        "nonmember_loss"}`` (means are None where there is nothing to average).
    """
    holder: dict[str, str] = {}
    if canary_clients:
        for cid, held in canary_placement(canaries, canary_clients).items():
            holder.update({c.secret: cid for c in held})
    secrets = {c.secret for c in canaries}
    rows = []
    for i, canary in enumerate(canaries):
        s = score_canary(
            model, tokenizer, canary, candidates=candidates, seed=[seed, i],
            batch_size=batch_size, exclude=secrets, score_fn=score_fn,
        )
        rows.append({
            "index": i, "secret": canary.secret, "client": holder.get(canary.secret),
            "exposure": s.exposure, "rank": s.rank, "log_perplexity": s.log_perplexity,
        })
    exposures = [r["exposure"] for r in rows]

    rng = np.random.default_rng([seed, 0x5A3])
    mem, non = _cap(members, mia_examples, rng), _cap(nonmembers, mia_examples, rng)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    mem_loss = loss_scores(model, mem, pad_id=pad, batch_size=batch_size) if mem else np.zeros(0)
    non_loss = loss_scores(model, non, pad_id=pad, batch_size=batch_size) if non else np.zeros(0)
    return {
        "canaries": rows,
        "exposure_mean": float(np.mean(exposures)) if exposures else None,
        "exposure_max": float(np.max(exposures)) if exposures else None,
        "exposure_ceiling": math.log2(candidates + 1),
        "candidates": candidates,
        "mia_auc": mia_auc(mem_loss, non_loss) if mem and non else None,
        "members": len(mem),
        "nonmembers": len(non),
        "member_loss": float(mem_loss.mean()) if mem else None,
        "nonmember_loss": float(non_loss.mean()) if non else None,
    }
