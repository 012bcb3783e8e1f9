"""Evaluation of a reward model on held-out pairs. Pure NumPy/PyTorch, no Django.

Every number of the report is computed on the same held-out pairs, so the reward model, the CLIPScore
baseline, the active model and the human ceiling are directly comparable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import spearmanr

from scoring.reward_model import RewardEnsemble
from training.pairs import PairSet, TrainingData

# A predicted P(a > b) within this distance of 0.5 counts as "predicted tie" in the tie-aware accuracy.
DEFAULT_TIE_MARGIN = 0.1


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def pairwise_accuracy(score_a: np.ndarray, score_b: np.ndarray, target: np.ndarray) -> float:
    """Share of untied pairs ordered like the humans; a scorer's own exact tie earns half credit.

    Targets above 0.5 mean ``a`` was preferred (a consensus of 0.67 counts as a preference).
    NaN when there is no untied pair.
    """
    score_a, score_b, target = (np.asarray(x, np.float64) for x in (score_a, score_b, target))
    decided = target != 0.5
    if not decided.any():
        return float("nan")
    diff = (score_a - score_b)[decided]
    wanted = target[decided] > 0.5
    credit = np.where(diff == 0, 0.5, ((diff > 0) == wanted).astype(np.float64))
    return float(credit.mean())


def tie_aware_accuracy(prob: np.ndarray, target: np.ndarray, margin: float = DEFAULT_TIE_MARGIN) -> float:
    """Three-way accuracy over all pairs: a > b, a = b, a < b.

    The model "predicts a tie" when its P(a > b) is within ``margin`` of 0.5; humans tied when the
    target is exactly 0.5. So a model that learned ties as ties is rewarded for it.
    """
    prob, target = np.asarray(prob, np.float64), np.asarray(target, np.float64)
    if len(prob) == 0:
        return float("nan")
    predicted = np.where(np.abs(prob - 0.5) < margin, 0, np.sign(prob - 0.5))
    truth = np.where(target == 0.5, 0, np.sign(target - 0.5))
    return float((predicted == truth).mean())


def clipscore(image_embed: np.ndarray, text_embed: np.ndarray) -> np.ndarray:
    """CLIPScore (Hessel et al. 2021): 2.5 * max(cos, 0) of the shared embeddings."""
    image_embed = np.asarray(image_embed, np.float64)
    text_embed = np.asarray(text_embed, np.float64)
    norms = np.linalg.norm(image_embed, axis=1) * np.linalg.norm(text_embed, axis=1)
    cos = np.sum(image_embed * text_embed, axis=1) / np.maximum(norms, 1e-12)
    return 2.5 * np.maximum(cos, 0.0)


def expected_calibration_error(prob: np.ndarray, target: np.ndarray, n_bins: int = 10) -> float:
    """ECE of P(a > b) against the human targets (a tie counts as 0.5 of a preference).

    Symmetrised: every pair is counted as (p, t) and (1 - p, 1 - t), because which caption is "a" is
    an artefact of how pairs are listed (the preferred one first) and must not shift the bins.
    """
    prob, target = np.asarray(prob, np.float64), np.asarray(target, np.float64)
    if len(prob) == 0:
        return float("nan")
    p = np.concatenate([prob, 1.0 - prob])
    t = np.concatenate([target, 1.0 - target])
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for k in range(n_bins):
        mask = bins == k
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - t[mask].mean())
    return float(ece)


def spearman(predicted: np.ndarray, target: np.ndarray) -> float:
    """Spearman's rho over the entries that have a target; NaN if either side is constant."""
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    keep = ~np.isnan(target)
    if keep.sum() < 3 or np.ptp(target[keep]) == 0 or np.ptp(predicted[keep]) == 0:
        return float("nan")
    return float(spearmanr(predicted[keep], target[keep]).statistic)


@torch.no_grad()
def predict_rows(model: RewardEnsemble, data: TrainingData, rows: np.ndarray, chunk: int = 8192) -> dict:
    """Reward, uncertainty and criteria for feature rows, in chunks."""
    model.eval()
    rewards, uncertainty, criteria = [], [], []
    for start in range(0, len(rows), chunk):
        img, txt = data.rows(rows[start : start + chunk])
        out = model(torch.as_tensor(img), torch.as_tensor(txt))
        rewards.append(out.reward.double().numpy())
        uncertainty.append(out.uncertainty.double().numpy())
        criteria.append(out.criteria.double().numpy())
    n_crit = len(model.config.criteria)
    return {
        "reward": np.concatenate(rewards) if rewards else np.zeros(0),
        "uncertainty": np.concatenate(uncertainty) if uncertainty else np.zeros(0),
        "criteria": np.concatenate(criteria) if criteria else np.zeros((0, n_crit)),
    }


def clipscore_accuracy(data: TrainingData, pairset: PairSet) -> float:
    """The baseline on exactly the held-out pairs the model is judged on."""
    k = data.embed_dim
    img_a, txt_a = data.rows(pairset.a)
    img_b, txt_b = data.rows(pairset.b)
    return pairwise_accuracy(
        clipscore(img_a[:, :k], txt_a[:, :k]), clipscore(img_b[:, :k], txt_b[:, :k]), pairset.target
    )


def judge_accuracy(
    data: TrainingData, pairset: PairSet, judge_scores: dict[int, float]
) -> tuple[float | None, int]:
    """A multimodal judge as one more baseline: pairwise accuracy of its score on the held-out pairs
    whose two captions it judged (``judge_scores``: caption id -> score). Returns (accuracy, pairs)."""
    ids = np.asarray(data.caption_ids, dtype=np.int64)
    a_ids, b_ids = ids[pairset.a], ids[pairset.b]
    covered = np.array(
        [a in judge_scores and b in judge_scores for a, b in zip(a_ids, b_ids, strict=True)], bool
    )
    if not covered.any():
        return None, 0
    score_a = np.array([judge_scores[a] for a in a_ids[covered]], np.float64)
    score_b = np.array([judge_scores[b] for b in b_ids[covered]], np.float64)
    return _nan_to_none(pairwise_accuracy(score_a, score_b, pairset.target[covered])), int(covered.sum())


def reward_model_evaluate(
    model: RewardEnsemble,
    data: TrainingData,
    pairset: PairSet,
    *,
    human_ceiling: float | None = None,
    human_ceiling_pairs: int = 0,
    tie_margin: float = DEFAULT_TIE_MARGIN,
) -> dict:
    """The evaluation report (plain JSON values; None where a metric is undefined)."""
    if pairset.n_pairs == 0:
        raise ValueError("No held-out pairs to evaluate on.")
    rows = np.unique(np.concatenate([pairset.a, pairset.b, pairset.rated_rows]))
    pred = predict_rows(model, data, rows)
    position = {int(r): i for i, r in enumerate(rows)}
    ia = np.array([position[int(r)] for r in pairset.a])
    ib = np.array([position[int(r)] for r in pairset.b])
    r_a, r_b = pred["reward"][ia], pred["reward"][ib]
    prob = 1.0 / (1.0 + np.exp(-(r_a - r_b)))
    report = {
        "n_pairs": pairset.n_pairs,
        "n_decided_pairs": int((pairset.target != 0.5).sum()),
        "n_tied_pairs": int((pairset.target == 0.5).sum()),
        "accuracy": pairwise_accuracy(r_a, r_b, pairset.target),
        "tie_accuracy": tie_aware_accuracy(prob, pairset.target, tie_margin),
        "tie_margin": tie_margin,
        "tied_pairs_mean_abs_p": (
            float(np.abs(prob[pairset.target == 0.5] - 0.5).mean()) if (pairset.target == 0.5).any() else None
        ),
        "clipscore_accuracy": clipscore_accuracy(data, pairset),
        "ece": expected_calibration_error(prob, pairset.target),
        "mean_uncertainty": float(pred["uncertainty"].mean()),
        "human_ceiling": human_ceiling,
        "human_ceiling_pairs": int(human_ceiling_pairs),
        "spearman": {},
    }
    if len(pairset.rated_rows):
        ir = np.array([position[int(r)] for r in pairset.rated_rows])
        for c, key in enumerate(model.config.criteria):
            if c < pairset.ratings.shape[1]:
                report["spearman"][key] = _nan_to_none(
                    spearman(pred["criteria"][ir, c], pairset.ratings[:, c])
                )
    return {k: (_nan_to_none(v) if isinstance(v, float) else v) for k, v in report.items()}
