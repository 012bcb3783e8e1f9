"""Downstream check of a subset: train one small image-text model on it, measure zero-shot retrieval.

DataComp's question at this machine's scale: is a filtered subset better *training data*? The model is
LiT-style (Zhai et al. 2022, "locked-image tuning" taken one step further: both towers locked): frozen
image and text features from the embedding cache, two small trainable projections into a shared space,
the symmetric InfoNCE loss of CLIP with a learnable temperature. Every subset gets the same model, the
same number of optimisation steps and the same batch size, so what differs is only the data.

Plain PyTorch and NumPy, no Django: ``curate/downstream.py`` gathers the arrays, ``benchmarks/downstream.py``
builds them offline. Deterministic on the CPU for a seed (weights from a seeded generator, batches from a
seeded NumPy generator, no data-dependent parallelism).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

METRICS = ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")


@dataclass
class DownstreamConfig:
    # A fixed budget in optimisation steps, not epochs: DataComp fixes the samples seen whatever the
    # subset's size, so a smaller (filtered) set is repeated more often and a bigger one is not
    # favoured by more updates. 400 steps x 256 pairs = 102,400 samples seen.
    steps: int = 400
    # Pairs per step; each batch's other pairs are the negatives of the contrastive loss. A subset with
    # fewer pairs than this trains on all of them every step.
    batch_size: int = 256
    # Width of the shared space the two projections map into.
    proj_dim: int = 128
    # 0: linear projections (LiT's head). > 0: one hidden layer of this width (GELU) per tower.
    hidden: int = 0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # CLIP's initial temperature; the logit scale is learned and clamped at 100 as in CLIP.
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.proj_dim < 1 or self.hidden < 0:
            raise ValueError("steps >= 1, batch_size >= 2, proj_dim >= 1 and hidden >= 0 are required.")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {self.init_temperature}.")

    @property
    def samples_seen(self) -> int:
        return self.steps * self.batch_size


def _tower(in_dim: int, config: DownstreamConfig) -> nn.Module:
    if config.hidden:
        return nn.Sequential(
            nn.Linear(in_dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.proj_dim)
        )
    return nn.Linear(in_dim, config.proj_dim)


class LitModel(nn.Module):
    """Standardise each frozen feature column (statistics of the training subset), project, L2-normalise.

    Standardising matters for the offline encoder, whose image rows join a unit-norm embedding and
    unnormalised CNN features of a much larger scale; without it one block would dominate the projection.
    """

    def __init__(self, image_dim: int, text_dim: int, config: DownstreamConfig):
        super().__init__()
        self.image_proj = _tower(image_dim, config)
        self.text_proj = _tower(text_dim, config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.max_log_scale = math.log(config.max_logit_scale)
        for name, dim in (("image", image_dim), ("text", text_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    @torch.no_grad()
    def fit_feature_stats(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> None:
        for name, x in (("image", image_feats), ("text", text_feats)):
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            # Constant columns (std 0) stay unscaled instead of dividing by zero.
            getattr(self, f"{name}_std").copy_(x.std(0, unbiased=False).clamp_min(1e-6))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj((x - self.image_mean) / self.image_std), dim=-1)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj((x - self.text_mean) / self.text_std), dim=-1)

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """Image-to-text logits ``[B, B]``: the scaled cosine similarities of every pairing."""
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return scale * self.encode_image(image_feats) @ self.encode_text(text_feats).T


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: row i's positive is column i, in both directions."""
    labels = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels))


def batch_indices(n: int, config: DownstreamConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """``config.steps`` batches over ``n`` pairs: successive shuffled passes, each pass used whole before
    the next begins (a batch never holds one pair twice). With ``n <= batch_size`` every step is the
    whole set."""
    size = min(config.batch_size, n)
    batches: list[np.ndarray] = []
    order, position = rng.permutation(n), 0
    while len(batches) < config.steps:
        if position + size > n:
            order, position = rng.permutation(n), 0
        batches.append(order[position : position + size])
        position += size
    return batches


@dataclass
class LitResult:
    model: LitModel
    history: list[float] = field(default_factory=list)  # training loss every 50 steps
    seconds: float = 0.0


def _as_tensor(x: np.ndarray, device: str) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)


def train_lit(config: DownstreamConfig, image_feats: np.ndarray, text_feats: np.ndarray) -> LitResult:
    """Fit a LitModel on aligned pairs (row i of each is one pair) for exactly ``config.steps`` steps."""
    if len(image_feats) != len(text_feats):
        raise ValueError(f"{len(image_feats)} image rows but {len(text_feats)} text rows: pairs must align.")
    if len(image_feats) < 2:
        raise ValueError("A contrastive model needs at least two pairs to train on.")
    started = time.perf_counter()
    img = _as_tensor(image_feats, config.device)
    txt = _as_tensor(text_feats, config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LitModel(img.shape[1], txt.shape[1], config).to(config.device)
    model.fit_feature_stats(img, txt)
    # The temperature is not decayed: weight decay would pull the logit scale towards 1 (temperature 1).
    decayed = [p for name, p in model.named_parameters() if name != "logit_scale"]
    optimizer = torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": config.weight_decay},
            {"params": [model.logit_scale], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    rng = np.random.default_rng(config.seed)
    history: list[float] = []
    running = 0.0
    model.train()
    for step, idx in enumerate(batch_indices(len(img), config, rng), start=1):
        index = torch.as_tensor(idx, device=config.device)
        loss = clip_loss(model(img[index], txt[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += float(loss.detach())
        if step % 50 == 0 or step == config.steps:
            history.append(running / (50 if step % 50 == 0 else step % 50))
            running = 0.0
    model.eval()
    return LitResult(model=model, history=history, seconds=time.perf_counter() - started)


@torch.no_grad()
def evaluate_retrieval(
    model: LitModel, image_feats: np.ndarray, text_feats: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Zero-shot retrieval over held-out pairs (row i of each is one pair; one caption per image):
    image->text and text->image recall@k, the share whose true partner ranks in the top k among all
    ``len(image_feats)`` candidates. Chance is k / N. A candidate tied with the true partner does not
    push it down (identical captions of two images both count as found)."""
    device = model.image_mean.device
    img = model.encode_image(_as_tensor(image_feats, device))
    txt = model.encode_text(_as_tensor(text_feats, device))
    sims = img @ txt.T
    diagonal = sims.diagonal()
    # Rank = how many candidates score strictly higher than the true partner.
    i2t_rank = (sims > diagonal[:, None]).sum(1)
    t2i_rank = (sims > diagonal[None, :]).sum(0)
    recall = {"i2t": i2t_rank, "t2i": t2i_rank}
    return {
        f"{direction}_r{k}": float((rank < k).double().mean())
        for direction, rank in recall.items()
        for k in ks
    }


def metrics_summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation over seeds of every metric in ``runs``."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)] if runs else []
    return {
        "mean": {k: float(np.mean([r[k] for r in runs])) for k in keys},
        "std": {k: float(np.std([r[k] for r in runs])) for k in keys},
    }


def subset_evaluate(
    config: DownstreamConfig,
    train_image: np.ndarray,
    train_text: np.ndarray,
    test_image: np.ndarray,
    test_text: np.ndarray,
) -> dict[str, float]:
    """Train on one subset with ``config`` (its seed included) and return the held-out retrieval."""
    result = train_lit(config, train_image, train_text)
    metrics = evaluate_retrieval(result.model, test_image, test_text)
    metrics["final_loss"] = result.history[-1] if result.history else float("nan")
    metrics["seconds"] = result.seconds
    return metrics


def config_dict(config: DownstreamConfig) -> dict:
    return {**asdict(config), "samples_seen": config.samples_seen}
