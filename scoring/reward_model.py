"""The reward model: frozen encoder features of an image-text pair -> an ensemble of small MLP heads.

Plain PyTorch, no Django. ``scoring`` runs inference with it and ``training`` trains it; it lives here
because scoring must not import training.

Features per pair (from ``scoring.features.caption_features``): ``image_feats`` [N, Fi] and
``text_feats`` [N, Ft]. Each row begins with the L2-normalised shared embedding (``embed_dim``
columns, where cosine similarity is the zero-shot image-text score); any further columns are
encoder-specific extras (e.g. a CNN's pooled features) that the heads may use.

Each head outputs one overall reward (an unbounded Bradley-Terry utility: only differences between
captions of the same image mean anything) and one score per criterion on the 1-5 scale. The ensemble's
mean is the prediction and its spread the uncertainty that active learning uses.

Usage (what scoring does)::

    model, meta = load_checkpoint(path)
    out = model(image_feats, text_feats)   # out.reward [N], out.criteria [N, C], out.uncertainty [N]
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from pool.hashing import file_sha256
from scoring.checkpoint_meta import checkpoint_meta_write

CHECKPOINT_FORMAT = "loupe-reward-model/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, corrupt, or of another format)."""


@dataclass
class RewardHeadConfig:
    image_dim: int
    text_dim: int
    # Width of the shared image-text embedding at the start of each row; the interaction features
    # (product, cosine) are only meaningful there. 0 means "the whole row" when
    # both rows have the same width.
    embed_dim: int = 0
    # Small on purpose: a few thousand judgments cannot fit more than a few hundred hidden units
    # without memorising them, and the frozen encoder already did the heavy lifting.
    hidden: int = 128
    # Five members is the usual deep-ensemble trade-off: the spread is informative, training stays
    # cheap because all members run as one batched matmul.
    n_heads: int = 5
    criteria: list[str] = field(default_factory=list)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.embed_dim <= 0:
            if self.image_dim != self.text_dim:
                raise ValueError(
                    f"embed_dim must be given when image_dim ({self.image_dim}) and text_dim "
                    f"({self.text_dim}) differ: it is the width of the shared embedding at the start."
                )
            self.embed_dim = self.image_dim
        if self.embed_dim > min(self.image_dim, self.text_dim):
            raise ValueError(
                f"embed_dim {self.embed_dim} is wider than the features (image {self.image_dim}, "
                f"text {self.text_dim})."
            )
        if self.n_heads < 1:
            raise ValueError("n_heads must be at least 1.")
        self.criteria = list(self.criteria)

    @property
    def input_dim(self) -> int:
        # image row, text row, product of the shared parts, and their cosine. (An |difference| block
        # was dropped: it cost a quarter of the training time and added nothing measurable.)
        return self.image_dim + self.text_dim + self.embed_dim + 1

    @property
    def n_outputs(self) -> int:
        return 1 + len(self.criteria)


@dataclass
class RewardOutput:
    reward: torch.Tensor  # [N] ensemble mean of the overall reward
    rewards: torch.Tensor  # [E, N] each member's reward
    criteria: torch.Tensor  # [N, C] ensemble mean, on the 1-5 scale
    member_criteria: torch.Tensor  # [E, N, C]
    uncertainty: torch.Tensor  # [N] ensemble standard deviation of the reward


class RewardEnsemble(nn.Module):
    """E independent two-layer MLP heads over one pair representation, evaluated as batched matmuls."""

    def __init__(self, config: RewardHeadConfig):
        super().__init__()
        self.config = config
        e, d, h, o = config.n_heads, config.input_dim, config.hidden, config.n_outputs
        self.w1 = nn.Parameter(torch.empty(e, d, h))
        self.b1 = nn.Parameter(torch.zeros(e, 1, h))
        self.w2 = nn.Parameter(torch.empty(e, h, o))
        self.b2 = nn.Parameter(torch.zeros(e, 1, o))
        self.dropout = nn.Dropout(config.dropout)
        # Standardisation of the pair representation, fitted on the training set: the extra feature
        # columns of some encoders have scales far from the unit-norm embedding.
        self.register_buffer("feat_mean", torch.zeros(d))
        self.register_buffer("feat_std", torch.ones(d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each member gets its own random init (Kaiming-uniform like nn.Linear): with bootstrap
        # resampling this is what makes the members disagree where data is thin.
        for w in (self.w1, self.w2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def _check_widths(self, img: torch.Tensor, txt: torch.Tensor) -> None:
        if img.shape[1] != self.config.image_dim or txt.shape[1] != self.config.text_dim:
            raise ValueError(
                f"features have widths image {img.shape[1]} / text {txt.shape[1]}, the model expects "
                f"{self.config.image_dim} / {self.config.text_dim}: were they made by another encoder?"
            )

    def _text_side(self, img_embed: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Everything but the image row: the text row, the elementwise product of the shared parts (a
        learnable, per-dimension image-text agreement) and their cosine (what CLIPScore sees)."""
        te = txt[:, : self.config.embed_dim]
        product = img_embed * te
        norms = (img_embed.norm(dim=1) * te.norm(dim=1)).clamp_min(1e-8)
        cos = (product.sum(dim=1) / norms).unsqueeze(1)
        return torch.cat([txt, product, cos], dim=1)

    def pair_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        img, txt = image_feats.float(), text_feats.float()
        self._check_widths(img, txt)
        return torch.cat([img, self._text_side(img[:, : self.config.embed_dim], txt)], dim=1)

    def fit_feature_stats(
        self, image_feats: torch.Tensor, text_feats: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> None:
        """Fit the standardisation on training features (chunked: a pool-sized matrix never exists)."""
        img, txt = torch.as_tensor(image_feats).float(), torch.as_tensor(text_feats).float()
        self._check_widths(img, txt)
        if image_index is None:
            image_index = torch.arange(len(txt))
        with torch.no_grad():
            s1 = torch.zeros(self.config.input_dim, dtype=torch.float64)
            s2 = torch.zeros_like(s1)
            for start in range(0, len(txt), 8192):
                idx = torch.as_tensor(image_index[start : start + 8192])
                x = self.pair_features(img[idx], txt[start : start + 8192]).double()
                s1 += x.sum(dim=0)
                s2 += x.square().sum(dim=0)
            n = max(len(txt), 1)
            mean = s1 / n
            std = (s2 / n - mean.square()).clamp_min(0).sqrt()
            self.feat_mean.copy_(mean.float())
            self.feat_std.copy_(std.float().clamp_min(1e-4))

    def standardized_inputs(
        self, image_feats: torch.Tensor, text_feats: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(standardised image rows [I, Fi], standardised rest of the pair [N, D - Fi]).

        The inputs are frozen features, so training computes these once for the whole data set and
        then only gathers rows and multiplies (``outputs_from_standardized``).
        """
        img, txt = torch.as_tensor(image_feats).float(), torch.as_tensor(text_feats).float()
        self._check_widths(img, txt)
        fi, k = self.config.image_dim, self.config.embed_dim
        img_embed = img[:, :k] if image_index is None else img[image_index, :k]
        img_std = (img - self.feat_mean[:fi]) / self.feat_std[:fi]
        rest = (self._text_side(img_embed, txt) - self.feat_mean[fi:]) / self.feat_std[fi:]
        return img_std, rest

    def outputs_from_standardized(
        self, img_std: torch.Tensor, rest: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[E, N, 1 + C] from ``standardized_inputs``; row n uses image ``image_index[n]`` (or n).

        The image half of the first layer (the widest part) runs once per distinct image, not once
        per caption.
        """
        fi, e = self.config.image_dim, self.config.n_heads
        img_part = torch.matmul(img_std.unsqueeze(0), self.w1[:, :fi])  # [E, I, h]
        if image_index is not None:
            img_part = img_part[:, image_index]
        hidden = torch.baddbmm(self.b1, rest.unsqueeze(0).expand(e, -1, -1), self.w1[:, fi:]) + img_part
        hidden = self.dropout(nn.functional.gelu(hidden))
        return torch.baddbmm(self.b2, hidden, self.w2)

    def raw_outputs(
        self, image_feats: torch.Tensor, text_feats: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[E, N, 1 + C]: unbounded reward, then criterion logits. With ``image_index`` [N],
        ``image_feats`` holds distinct images and row n pairs text n with image ``image_index[n]``."""
        img_std, rest = self.standardized_inputs(image_feats, text_feats, image_index)
        return self.outputs_from_standardized(img_std, rest, image_index)

    @staticmethod
    def criteria_from_logits(logits: torch.Tensor) -> torch.Tensor:
        # Bounded to the rating scale so a prediction can never leave 1-5.
        return 1.0 + 4.0 * torch.sigmoid(logits)

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> RewardOutput:
        out = self.raw_outputs(image_feats, text_feats)
        rewards = out[..., 0]
        member_criteria = self.criteria_from_logits(out[..., 1:])
        return RewardOutput(
            reward=rewards.mean(dim=0),
            rewards=rewards,
            criteria=member_criteria.mean(dim=0),
            member_criteria=member_criteria,
            uncertainty=rewards.std(dim=0, unbiased=False),
        )


def save_checkpoint(path: str | os.PathLike, model: RewardEnsemble, meta: dict) -> str:
    """Write weights + config + meta atomically (temp file + rename); return the file's sha256.

    ``meta`` should carry at least ``encoder``, ``criteria`` and ``version``; it must be plain JSON
    values so the file loads with ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta.setdefault("criteria", list(model.config.criteria))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    checkpoint_meta_write(path, {"config": payload["config"], "meta": meta})
    return file_sha256(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Return ``(model, meta)`` with the model in eval mode; raise CheckpointError on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Reward model checkpoint {path} does not exist.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"Reward model checkpoint {path} is corrupt or not a checkpoint ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"Reward model checkpoint {path} has format {found!r}, expected {CHECKPOINT_FORMAT!r}."
        )
    try:
        config = RewardHeadConfig(**payload["config"])
        model = RewardEnsemble(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"Reward model checkpoint {path} does not match its config: {exc}") from exc
    model.to(map_location)
    model.eval()
    return model, dict(payload.get("meta") or {})


def checkpoint_sha256(path: str | os.PathLike) -> str:
    return file_sha256(path)
