"""What an alignment run measures: alignment, divergences to the target and from the base, diversity, Ẑ.

All divergence estimates use samples of the policy π (importance weights p/π), with ``log p = log P − log Ẑ_c``
per context; with several contexts every number is the mean over contexts.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch

from tunelens.align.fdivergence import divergence_from_samples, get_divergence
from tunelens.align.partition import ess


def distinct_n(token_lists: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams over the whole sample set (0 if there are none)."""
    grams = [tuple(t[i:i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _ngrams(t: Sequence[int], n: int) -> Counter:
    return Counter(tuple(t[i:i + n]) for i in range(len(t) - n + 1))


def self_bleu(token_lists: Sequence[Sequence[int]], max_n: int = 4, limit: int = 200) -> float:
    """Mean BLEU-``max_n`` of each sequence against all others as references (add-one smoothed for n > 1).

    Higher means less diverse. Uses at most ``limit`` sequences (the first ones) to bound the O(N²) cost.
    """
    seqs = [list(t) for t in token_lists[:limit] if len(t) > 0]
    if len(seqs) < 2:
        return 0.0
    counts = [[_ngrams(s, n) for n in range(1, max_n + 1)] for s in seqs]
    scores = []
    for i, hyp in enumerate(seqs):
        log_prec = 0.0
        for n in range(1, max_n + 1):
            h = counts[i][n - 1]
            total = sum(h.values())
            if total == 0:
                log_prec += math.log(1.0 / 2.0) if n > 1 else -math.inf
                continue
            max_ref: Counter = Counter()
            for j in range(len(seqs)):
                if j != i:
                    max_ref |= counts[j][n - 1]
            clipped = sum(min(c, max_ref[g]) for g, c in h.items())
            if n == 1:
                log_prec += math.log(clipped / total) if clipped else -math.inf
            else:
                log_prec += math.log((clipped + 1) / (total + 1))
        ref_lens = [len(s) for j, s in enumerate(seqs) if j != i]
        closest = min(ref_lens, key=lambda r: (abs(r - len(hyp)), r))
        bp = 1.0 if len(hyp) > closest else math.exp(1 - closest / len(hyp))
        scores.append(bp * math.exp(log_prec / max_n) if math.isfinite(log_prec) else 0.0)
    return sum(scores) / len(scores)


def divergences(log_pi: torch.Tensor, log_p: torch.Tensor, context_index: Sequence[int]) -> dict[str, float]:
    """IS estimates of KL(p‖π), KL(π‖p), TV and JS from policy samples, averaged over contexts.

    KL(π‖p) is +inf when some sample falls outside the target's support (a pointwise target); then
    ``rkl_in_support`` gives KL on the accepted samples only, renormalised.
    """
    idx = torch.tensor(list(context_index))
    names = {"kl_p_pi": "fkl", "kl_pi_p": "rkl", "tv": "tv", "js": "js"}
    acc: dict[str, list[float]] = {k: [] for k in names}
    in_support: list[float] = []
    for c in sorted(set(idx.tolist())):
        sel = idx == c
        lpi, lp = log_pi[sel].double(), log_p[sel].double()
        for key, div in names.items():
            acc[key].append(divergence_from_samples(get_divergence(div), lpi, lp))
        ok = torch.isfinite(lp)
        if ok.any():
            # KL(π_b‖p) with π_b = π restricted to the support: E[log π − log p | b] − log π(b)
            log_pi_b = math.log(float(ok.double().mean()))
            in_support.append(float((lpi[ok] - lp[ok]).mean()) - log_pi_b)
    out = {k: sum(v) / len(v) for k, v in acc.items()}
    if in_support:
        out["kl_pi_p_in_support"] = sum(in_support) / len(in_support)
    return out


def kl_p_pi_from_base(log_pi: torch.Tensor, log_a: torch.Tensor, log_factor: torch.Tensor,
                      context_index: Sequence[int]) -> dict[str, float]:
    """KL(p‖π) from samples of the base a, self-normalised, averaged over contexts.

    With weights w = P/a = Π factors, E_p[g] = E_a[w·g] / E_a[w]; Z_c is estimated on the same samples
    (``z_base``). For a pointwise target the accepted base samples are exact draws from p, so unlike the
    policy-sample estimates this one stays meaningful however far π has drifted from the support.
    Contexts with no accepted sample are skipped (``kl_p_pi_base_contexts`` counts the others).
    """
    idx = torch.tensor(list(context_index))
    kls, zs = [], []
    for c in sorted(set(idx.tolist())):
        sel = idx == c
        lf = log_factor[sel].double()
        ok = torch.isfinite(lf)
        if not ok.any():
            continue
        log_w = lf[ok]
        w = torch.exp(log_w - torch.logsumexp(log_w, 0))
        log_z = float(torch.logsumexp(log_w, 0)) - math.log(int(sel.sum()))
        log_p = log_a[sel][ok].double() + log_w - log_z
        kls.append(float((w * (log_p - log_pi[sel][ok].double())).sum()))
        zs.append(math.exp(log_z))
    if not kls:
        return {"kl_p_pi_base": math.nan, "kl_p_pi_base_contexts": 0.0}
    return {"kl_p_pi_base": sum(kls) / len(kls), "z_base": sum(zs) / len(zs), "kl_p_pi_base_contexts": float(len(kls))}


def policy_metrics(log_pi: torch.Tensor, log_a: torch.Tensor, lengths: Sequence[int],
                   token_lists: Sequence[Sequence[int]]) -> dict[str, float]:
    """KL(π‖a), sequence entropy and per-token entropy (Monte-Carlo), Distinct-1/2/3 and Self-BLEU-4."""
    n_tok = max(1, sum(lengths))
    return {
        "kl_pi_a": float((log_pi - log_a).mean()),
        "entropy": float(-log_pi.mean()),
        "entropy_per_token": float(-log_pi.sum() / n_tok),
        "mean_length": n_tok / max(1, len(lengths)),
        "distinct_1": distinct_n(token_lists, 1),
        "distinct_2": distinct_n(token_lists, 2),
        "distinct_3": distinct_n(token_lists, 3),
        "self_bleu": self_bleu(token_lists),
    }


def weight_metrics(log_w: torch.Tensor, prefix: str) -> dict[str, float]:
    """ESS fraction and largest normalised weight of importance weights (log space)."""
    n = max(1, log_w.numel())
    lw = log_w.double()
    return {f"{prefix}ess_fraction": ess(lw) / n,
            f"{prefix}max_weight": float(torch.exp(lw.max() - torch.logsumexp(lw, 0))) if torch.isfinite(lw).any() else 1.0}
