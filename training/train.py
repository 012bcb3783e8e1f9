"""Train the reward heads on frozen features. Plain PyTorch, no Django: ``train(config, data)``.

Deterministic for a seed on one device: weights come from ``torch.manual_seed``-style generators and
the batch order and bootstrap weights from a NumPy generator seeded from the same value.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from scoring.reward_model import RewardEnsemble, RewardHeadConfig
from training.config import TrainConfig
from training.finetune_config import TrainingCancelled  # noqa: F401 - raised here, caught by callers
from training.losses import bradley_terry_loss, criterion_loss
from training.pairs import PairSet, TrainingData

MIN_STEPS_PER_EPOCH = 16
MIN_BATCH = 32


@dataclass
class TrainResult:
    model: RewardEnsemble
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def _tensors(data: TrainingData, device: str):
    img = torch.as_tensor(np.ascontiguousarray(data.image_feats), dtype=torch.float32, device=device)
    txt = torch.as_tensor(np.ascontiguousarray(data.text_feats), dtype=torch.float32, device=device)
    img_of_row = torch.as_tensor(data.image_of_row, dtype=torch.long, device=device)
    return img, txt, img_of_row


@torch.no_grad()
def _standardized(model: RewardEnsemble, img: torch.Tensor, txt: torch.Tensor, img_of_row: torch.Tensor):
    """The whole data set's standardised inputs, once: the features are frozen and the statistics are
    fixed before training, so per step only gathers and matmuls remain."""
    img_std = model.standardized_inputs(img, txt[:0], img_of_row[:0])[0]
    rest = [
        model.standardized_inputs(img, txt[s : s + 8192], img_of_row[s : s + 8192])[1]
        for s in range(0, len(txt), 8192)
    ]
    return img_std, torch.cat(rest) if rest else txt[:0]


def _ratings_by_row(pairset: PairSet, n_rows: int, n_criteria: int) -> np.ndarray:
    out = np.full((n_rows, n_criteria), np.nan, np.float32)
    if len(pairset.rated_rows):
        out[pairset.rated_rows] = pairset.ratings
    return out


def _batch_losses(
    model: RewardEnsemble,
    img: torch.Tensor,
    txt: torch.Tensor,
    img_of_row: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    target: torch.Tensor,
    pair_weight: torch.Tensor,
    row_ratings: torch.Tensor,
    row_weight: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BT and criterion losses of one batch of pairs, each distinct caption and image computed once.

    ``img`` and ``txt`` are the standardised inputs of ``_standardized``."""
    rows, inverse = torch.unique(torch.cat([a, b]), return_inverse=True)
    images, image_index = torch.unique(img_of_row[rows], return_inverse=True)
    out = model.outputs_from_standardized(img[images], txt[rows], image_index)  # [E, R, 1 + C]
    n = len(a)
    reward = out[..., 0]
    bt = bradley_terry_loss(reward[:, inverse[:n]], reward[:, inverse[n:]], target, pair_weight)
    if out.shape[-1] == 1:
        return bt, bt * 0.0
    predicted = model.criteria_from_logits(out[..., 1:])
    weight = row_weight(rows) if row_weight is not None else None
    return bt, criterion_loss(predicted, row_ratings[rows].unsqueeze(0), weight)


@torch.no_grad()
def validation_loss(
    model: RewardEnsemble, data: TrainingData, pairset: PairSet, config: TrainConfig, inputs=None
) -> dict:
    """Loss and pairwise accuracy of the ensemble mean on a split (dropout off)."""
    was_training = model.training
    model.eval()
    if inputs is None:
        img, txt, img_of_row = _tensors(data, config.device)
        img, txt = _standardized(model, img, txt, img_of_row)
    else:
        img, txt, img_of_row = inputs
    ratings = torch.as_tensor(_ratings_by_row(pairset, len(txt), len(data.criteria)), device=config.device)
    bt_sum = crit_sum = 0.0
    correct = strict = 0
    order = np.arange(pairset.n_pairs)
    for start in range(0, len(order), 8192):
        sl = slice(start, start + 8192)
        a = torch.as_tensor(pairset.a[sl], device=config.device)
        b = torch.as_tensor(pairset.b[sl], device=config.device)
        target = torch.as_tensor(pairset.target[sl], device=config.device)
        weight = torch.as_tensor(pairset.weight[sl], device=config.device)
        rows, inverse = torch.unique(torch.cat([a, b]), return_inverse=True)
        images, image_index = torch.unique(img_of_row[rows], return_inverse=True)
        out = model.outputs_from_standardized(img[images], txt[rows], image_index)
        reward = out[..., 0].mean(dim=0)
        r_a, r_b = reward[inverse[: len(a)]], reward[inverse[len(a) :]]
        bt_sum += float(bradley_terry_loss(r_a, r_b, target, weight)) * float(weight.sum())
        if out.shape[-1] > 1:
            predicted = model.criteria_from_logits(out[..., 1:]).mean(dim=0)
            crit_sum += float(criterion_loss(predicted, ratings[rows])) * float(weight.sum())
        decided = target != 0.5
        strict += int(decided.sum())
        correct += int((((r_a - r_b) > 0) == (target > 0.5))[decided].sum())
    total_weight = float(pairset.weight.sum()) or 1.0
    model.train(was_training)
    bt, crit = bt_sum / total_weight, crit_sum / total_weight
    return {
        "bt_loss": bt,
        "criterion_loss": crit,
        "loss": bt + config.criterion_weight * crit,
        "accuracy": correct / strict if strict else float("nan"),
    }


def train(
    config: TrainConfig,
    data: TrainingData,
    progress: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Fit a RewardEnsemble on ``data.train``; early-stop on ``data.validation`` when it has pairs.

    ``progress(epoch, epochs, record)`` is called after every epoch (a run row, a tqdm bar).
    ``should_stop()`` is asked before every epoch and once after the last (a cancelled run): when it
    says yes, ``TrainingCancelled`` is raised and nothing is returned.
    """
    if data.train.n_pairs == 0:
        raise ValueError("No training pairs: every judgment needs at least two captions.")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = RewardHeadConfig(
        image_dim=int(data.image_feats.shape[1]),
        text_dim=int(data.text_feats.shape[1]),
        embed_dim=int(data.embed_dim),
        hidden=config.hidden,
        n_heads=config.n_heads,
        criteria=list(data.criteria),
        dropout=config.dropout,
    )
    model = RewardEnsemble(head).to(config.device)
    img, txt, img_of_row = _tensors(data, config.device)
    train_rows = np.unique(np.concatenate([data.train.a, data.train.b]))
    model.fit_feature_stats(img, txt[train_rows], img_of_row[train_rows])
    img, txt = _standardized(model, img, txt, img_of_row)

    ts = data.train
    pair_image = data.image_of_row[ts.a]
    n_images = int(data.image_feats.shape[0])
    if config.bootstrap and config.n_heads > 1:
        boot = rng.poisson(1.0, size=(config.n_heads, n_images)).astype(np.float32)
    else:
        boot = np.ones((config.n_heads, n_images), np.float32)
    boot_t = torch.as_tensor(boot, device=config.device)
    row_ratings = torch.as_tensor(_ratings_by_row(ts, len(txt), len(data.criteria)), device=config.device)

    def row_weight(rows: torch.Tensor) -> torch.Tensor:
        return boot_t[:, img_of_row[rows]]

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # A small campaign still gets several steps per epoch: with a few hundred pairs and the large
    # default batch, an epoch would be one step and the heads would stop far from converged.
    batch_size = max(MIN_BATCH, min(config.batch_size, math.ceil(ts.n_pairs / MIN_STEPS_PER_EPOCH)))
    steps_per_epoch = max(1, math.ceil(ts.n_pairs / batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    has_validation = data.validation is not None and data.validation.n_pairs > 0

    history: list[dict] = []
    best_state, best_loss, best_epoch, stale = None, math.inf, 0, 0
    for epoch in range(1, config.epochs + 1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"Training was cancelled after {epoch - 1} of {config.epochs} epochs.")
        model.train()
        # Batches are runs of whole images in a shuffled order, so a batch's captions share their
        # images and the image half of the first layer is computed once per image.
        image_rank = rng.permutation(n_images)
        order = np.lexsort((rng.random(ts.n_pairs), image_rank[pair_image]))
        bt_total = crit_total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            a = torch.as_tensor(ts.a[idx], device=config.device)
            b = torch.as_tensor(ts.b[idx], device=config.device)
            target = torch.as_tensor(ts.target[idx], device=config.device)
            weight = torch.as_tensor(ts.weight[idx], device=config.device).unsqueeze(0)
            weight = weight * boot_t[:, torch.as_tensor(pair_image[idx], device=config.device)]
            bt, crit = _batch_losses(
                model, img, txt, img_of_row, a, b, target, weight, row_ratings, row_weight
            )
            loss = bt + config.criterion_weight * crit
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bt_total += float(bt.detach()) * len(idx)
            crit_total += float(crit.detach()) * len(idx)
        record = {
            "epoch": epoch,
            "train_bt_loss": bt_total / ts.n_pairs,
            "train_criterion_loss": crit_total / ts.n_pairs,
        }
        if has_validation:
            val = validation_loss(model, data, data.validation, config, inputs=(img, txt, img_of_row))
            record.update({f"val_{k}": v for k, v in val.items()})
            current = val["loss"]
        else:
            current = record["train_bt_loss"] + config.criterion_weight * record["train_criterion_loss"]
        history.append(record)
        if progress is not None:
            progress(epoch, config.epochs, record)
        if current < best_loss - 1e-5:
            best_loss, best_epoch, stale = current, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if has_validation and stale >= config.patience:
                break
    if should_stop is not None and should_stop():
        raise TrainingCancelled(f"Training was cancelled after {len(history)} of {config.epochs} epochs.")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model, history=history, best_epoch=best_epoch, seconds=time.perf_counter() - started
    )


def train_config_dict(config: TrainConfig) -> dict:
    return asdict(config)
