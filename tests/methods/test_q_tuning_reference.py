"""Equivalence of ``qtbench.methods.q_tuning`` with a straightforward port of the authors' code.

The reference below follows ``LLaMA-Factory/src/llamafactory/train/sft/trainer.py``
of ``Q-tuning/Q-tuning`` (``_compute_ppl_entropy``, ``_dynamic_threshold_search_bisect``
and the ``plug == "wisely"`` branch of ``compute_loss``) line by line, with Python
loops and numpy (``np.quantile``, ``np.argsort``) in float64 instead of torch, plus
the paper-text variants described in ``/work/shared/design/paper.md``.  Ties that the
code leaves to ``torch.topk`` are broken as qtbench documents (lower flat index
first).  Values are drawn from a dyadic grid (k/8) so that every sum is exact in
any order: the two implementations must then agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.q_tuning import select


def reference(nll, ent, resp, attn, r_s, r_t, entropy_over="all", token_budget="batch", neighbours="attended",
              token_drop="highest", lam=0.5, tol=0.01, max_iter=10):
    """Returns (sample_keep [B] bool, token_keep [B, T] bool) as numpy arrays."""
    B, T = nll.shape
    valid_label = [[bool(resp[b, j]) and bool(attn[b, j]) for j in range(T)] for b in range(B)]

    # _compute_ppl_entropy: CE is 0 where label == -100
    ppl = np.zeros(B)
    entropy = np.zeros(B)
    for b in range(B):
        total, count = 0.0, 0
        for j in range(T):
            if valid_label[b][j]:
                total += float(nll[b, j])
                count += 1
        ppl[b] = np.exp(total / max(count, 1))
        total, count = 0.0, 0
        for j in range(T):
            use = attn[b, j] if entropy_over == "all" else valid_label[b][j]
            if use:
                total += float(ent[b, j])
                count += 1
        entropy[b] = total / max(count, 1)

    # _dynamic_threshold_search_bisect
    def _quantile(x, q):
        q = float(min(max(q, 0.0), 1.0))
        return float(np.quantile(x, q))

    alpha_low, alpha_high = 0.0, 0.49
    beta_low, beta_high = 0.0, 0.49
    best = None
    for _ in range(max_iter):
        alpha = (alpha_low + alpha_high) / 2.0
        beta = (beta_low + beta_high) / 2.0
        ppl_hi = _quantile(ppl, 1.0 - alpha)
        ppl_lo = _quantile(ppl, alpha)
        ent_lo = _quantile(entropy, beta)
        ent_hi = _quantile(entropy, 1.0 - beta)
        Q2 = (ppl > ppl_hi) & (entropy <= ent_lo)
        Q4 = (ppl <= ppl_lo) & (entropy > ent_hi)
        keep_frac = (Q2.sum() + Q4.sum()) / max(1, B)
        best = (Q2, Q4)
        if abs(keep_frac - r_s) < tol:
            break
        if keep_frac < r_s:
            alpha_low, beta_low = alpha, beta
        else:
            alpha_high, beta_high = alpha, beta
    Q2_mask, Q4_mask = best
    Q2_idx = np.where(Q2_mask)[0]
    Q4_idx = np.where(Q4_mask)[0]
    Qkeep_idx = np.concatenate([Q2_idx, Q4_idx], axis=0)

    # top-up to K
    K_keep = max(1, int(round(B * r_s)))
    K_keep = min(K_keep, B)

    def _norm(x):
        x_min = float(np.min(x))
        x_max = float(np.max(x))
        if x_max - x_min < 1e-12:
            return np.zeros_like(x)
        return (x - x_min) / (x_max - x_min)

    extra = np.array([], dtype=np.int64)
    if Qkeep_idx.size < K_keep:
        ppl_n, ent_n = _norm(ppl), _norm(entropy)
        s2 = ppl_n - ent_n
        s4 = ent_n - ppl_n
        wise_score = np.maximum(s2, s4)
        already = set(Qkeep_idx.tolist())
        remain = np.array([i for i in range(B) if i not in already], dtype=np.int64)
        need = K_keep - Qkeep_idx.size
        order = np.argsort(-wise_score[remain], kind="stable")
        extra = remain[order[:min(need, remain.size)]]
        Qkeep_idx = np.concatenate([Qkeep_idx, extra], axis=0)
        q2_all = list(Q2_idx) + [int(i) for i in extra if s2[i] >= s4[i]]
    else:
        q2_all = list(Q2_idx)
    kept = set(int(i) for i in Qkeep_idx)
    q2_all = set(int(i) for i in q2_all)

    # token scores: s_i = (1 - lam) ppl_i + lam (ppl_{i-1} + ppl_{i+1})
    def base(b, j):
        if j < 0 or j >= T:
            return 0.0
        if neighbours == "attended":
            if not attn[b, j]:
                return 0.0
            return float(np.exp(float(nll[b, j]) if valid_label[b][j] else 0.0))
        return float(np.exp(float(nll[b, j]))) if valid_label[b][j] else 0.0

    score = {}
    for b in range(B):
        for j in range(T):
            score[(b, j)] = (1.0 - lam) * base(b, j) + lam * (base(b, j - 1) + base(b, j + 1))

    def order_key(c):
        b, j = c
        return ((score[c] if token_drop == "lowest" else -score[c]), b * T + j)

    drop = set()
    if token_budget == "batch":
        total_tokens_batch = int(sum(bool(attn[b, j]) for b in range(B) for j in range(T)))
        target_keep_tokens = int(round(total_tokens_batch * float(r_s) * float(r_t)))
        drop_target = max(0, total_tokens_batch - target_keep_tokens)
        dropped_tokens_by_samples = sum(bool(attn[b, j]) for b in range(B) if b not in kept for j in range(T))
        remaining = max(0, drop_target - dropped_tokens_by_samples)
        if remaining > 0 and r_t != 1.0:
            cands = [(b, j) for b in sorted(q2_all) for j in range(T) if valid_label[b][j]]
            n_drop = min(remaining, len(cands))
            drop = set(sorted(cands, key=order_key)[:n_drop])
    else:
        for b in sorted(q2_all):
            cands = [(b, j) for j in range(T) if valid_label[b][j]]
            n_keep = math.floor(r_t * len(cands))
            drop |= set(sorted(cands, key=order_key)[: len(cands) - n_keep])

    sample_keep = np.array([b in kept for b in range(B)])
    token_keep = np.array([[b in kept and valid_label[b][j] and (b, j) not in drop for j in range(T)]
                           for b in range(B)])
    return sample_keep, token_keep


def random_case(rng):
    B = int(rng.integers(1, 11))
    T = int(rng.integers(1, 17))
    if rng.random() < 0.6:  # realistic rows: prompt, response, padding (right-padded)
        attn = np.zeros((B, T), dtype=bool)
        resp = np.zeros((B, T), dtype=bool)
        for b in range(B):
            length = int(rng.integers(0, T + 1))
            prompt = int(rng.integers(0, length + 1))
            attn[b, :length] = True
            resp[b, prompt:length] = True
    else:  # arbitrary masks (multi-turn gaps, left padding, ...)
        attn = rng.random((B, T)) < 0.85
        resp = attn & (rng.random((B, T)) < 0.6)
    top = int(rng.choice([4, 16, 48]))  # small top: many ties
    nll = rng.integers(0, top + 1, size=(B, T)) / 8.0
    ent = rng.integers(0, top + 1, size=(B, T)) / 8.0
    r_s = float(rng.choice([0.0625, 0.125, 0.25, 0.5, 0.7, 1.0, rng.uniform(0.01, 1.0)]))
    r_t = float(rng.choice([0.5, 0.7, 1.0, 2 / 3, rng.uniform(0.01, 1.0)]))
    opts = {
        "entropy_over": str(rng.choice(["all", "response"])),
        "token_budget": str(rng.choice(["batch", "per_sample"])),
        "neighbours": str(rng.choice(["attended", "response"])),
        "token_drop": str(rng.choice(["highest", "lowest"])),
        "lambda": float(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0])),
    }
    return nll, ent, resp, attn, r_s, r_t, opts


def test_equivalence_with_reference_on_random_batches():
    rng = np.random.default_rng(2509_23873)
    pruned_somewhere = topped_up = 0
    for _ in range(200):
        nll, ent, resp, attn, r_s, r_t, opts = random_case(rng)
        stats = BatchStats.from_tensors(torch.tensor(nll), torch.tensor(ent), torch.tensor(resp), torch.tensor(attn))
        sel = select(stats, Budget(r_s, r_t), **opts)
        want_samples, want_tokens = reference(nll, ent, resp, attn, r_s, r_t, opts["entropy_over"],
                                              opts["token_budget"], opts["neighbours"], opts["token_drop"],
                                              opts["lambda"])
        context = (r_s, r_t, opts, nll.tolist(), ent.tolist(), resp.tolist(), attn.tolist())
        assert sel.sample_keep.numpy().tolist() == want_samples.tolist(), context
        assert sel.token_keep.numpy().tolist() == want_tokens.tolist(), context
        pruned_somewhere += sel.trace["tokens_pruned"] > 0
        topped_up += sel.trace["n_topup"] > 0
    # the random cases exercise both the top-up and the token pruning
    assert pruned_somewhere > 40 and topped_up > 40


def test_equivalence_float32_stats_in_code_defaults():
    """Realistic float32 stats (as the stats pass returns), code defaults, paper grid budgets."""
    rng = np.random.default_rng(7)
    for _ in range(100):
        B, T = 8, int(rng.integers(8, 40))
        attn = np.zeros((B, T), dtype=bool)
        resp = np.zeros((B, T), dtype=bool)
        for b in range(B):
            length = int(rng.integers(2, T + 1))
            prompt = int(rng.integers(1, length))
            attn[b, :length] = True
            resp[b, prompt:length] = True
        nll32 = torch.tensor(rng.gamma(1.5, 1.0, (B, T)), dtype=torch.float32)
        ent32 = torch.tensor(rng.gamma(2.0, 1.0, (B, T)), dtype=torch.float32)
        # dyadic rounding keeps the float32 values and makes the sums exact
        nll32 = torch.round(nll32 * 64) / 64
        ent32 = torch.round(ent32 * 64) / 64
        r_s = float(rng.choice([0.125, 0.25, 0.5]))
        r_t = float(rng.choice([0.5, 0.7]))
        stats = BatchStats.from_tensors(nll32, ent32, torch.tensor(resp), torch.tensor(attn))
        sel = select(stats, Budget(r_s, r_t))
        want_samples, want_tokens = reference(nll32.double().numpy(), ent32.double().numpy(), resp, attn, r_s, r_t)
        assert sel.sample_keep.numpy().tolist() == want_samples.tolist()
        assert sel.token_keep.numpy().tolist() == want_tokens.tolist()
