"""The encoder registry: each kind loads through its name, and bad names or weights fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image as PILImage

from scoring.encoders import EncoderError, encoder_load
from tests.scoring.tiny_clip import TINY_ARCH, TINY_CONFIG


def build_tiny_hf_clip(directory: Path) -> Path:
    """A random transformers CLIP with a byte-level vocabulary built offline (no merges): the
    tokenizer then splits words into characters, which is all a random model needs."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=16
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    sot, eot = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": sot,
            "eos_token_id": eot,
            "pad_token_id": eot,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _unit_rows(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(len(x)), atol=1e-3)


def test_tiny_open_clip_loads_from_a_weights_file(tiny_clip_name):
    encoder = encoder_load(tiny_clip_name)
    assert encoder.embed_dim == encoder.image_feature_dim == TINY_CONFIG["embed_dim"]
    image = PILImage.fromarray(skimage.data.chelsea())
    feats = encoder.encode_images(torch.stack([encoder.preprocess(image)] * 2))
    texts, truncated = encoder.encode_texts(["a cat", "word " * 100])
    assert feats.shape == (2, 32) and texts.shape == (2, 32)
    assert _unit_rows(feats) and _unit_rows(texts)
    assert truncated == [False, True]
    assert encoder.content_labels(feats, 3) == [[], []]


def test_encoder_is_loaded_once_per_process(tiny_clip_name):
    assert encoder_load(tiny_clip_name) is encoder_load(tiny_clip_name)


def test_hf_clip_loads_from_a_directory(tmp_path):
    directory = build_tiny_hf_clip(tmp_path / "hf-clip")
    encoder = encoder_load(f"hf:{directory}")
    assert encoder.embed_dim == 24 and encoder.context_length == 16
    feats = encoder.encode_images(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    texts, truncated = encoder.encode_texts(["cat", "a caption far longer than sixteen characters"])
    assert feats.shape == (3, 24) and texts.shape == (2, 24)
    assert _unit_rows(texts)
    assert truncated == [False, True]


def test_offline_encoder_scores_a_cat_photo_higher_with_cat_than_rocket():
    encoder = encoder_load("offline:effnet-minilm")
    assert encoder.image_feature_dim == encoder.embed_dim + 1280
    cat = encoder.preprocess(PILImage.fromarray(skimage.data.chelsea()))
    rocket = encoder.preprocess(PILImage.fromarray(skimage.data.rocket()))
    images = encoder.encode_images(torch.stack([cat, rocket]))
    texts, _ = encoder.encode_texts(["a photo of a cat", "a photo of a rocket"])
    cos = images[:, : encoder.embed_dim] @ texts.T
    assert cos[0, 0] > cos[0, 1]
    assert cos[1, 1] > cos[1, 0]
    labels = encoder.content_labels(images.numpy(), 3)
    assert any("cat" in label for label in labels[0])
    assert encoder.image_labels(images, 1) == [labels[0][:1], labels[1][:1]]


def test_unknown_encoder_name_is_one_clear_error():
    with pytest.raises(EncoderError, match="Unknown encoder 'clip-large'"):
        encoder_load("clip-large")


def test_unknown_open_clip_architecture_is_a_clear_error(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    with pytest.raises(EncoderError, match="no architecture 'NoSuchNet'"):
        encoder_load(f"open_clip:NoSuchNet:{weights}")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="does not exist or is unreadable"):
        encoder_load(f"open_clip:ViT-B-32:{tmp_path / 'missing.pt'}")


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    (tmp_path / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(EncoderError, match="could not load weights"):
        encoder_load(f"open_clip:{TINY_ARCH}:{garbage}")


def test_weights_of_another_architecture_are_a_clear_error(tiny_clip_name, tmp_path):
    weights = Path(tiny_clip_name.split(":", 2)[2])
    wider = {**TINY_CONFIG, "embed_dim": 48}
    (tmp_path / "loupe-tiny-wider.json").write_text(json.dumps(wider))
    copy = tmp_path / "tiny.pt"
    copy.write_bytes(weights.read_bytes())
    with pytest.raises(EncoderError, match="size mismatch"):
        encoder_load(f"open_clip:loupe-tiny-wider:{copy}")


def test_hf_directory_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="no readable config.json"):
        encoder_load(f"hf:{tmp_path}")


def test_preprocess_gives_the_same_crop_from_pil_and_tensor_paths():
    from scoring.encoders import ImagePreprocess

    pre = ImagePreprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    yy, xx = np.mgrid[0:48, 0:64]
    array = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    from_pil = pre.to_uint8(PILImage.fromarray(array)).int()
    from_tensor = pre.resize_crop_tensor(torch.from_numpy(array).permute(2, 0, 1)).int()
    assert from_pil.shape == from_tensor.shape == (3, 32, 32)
    # Bicubic in PIL and torchvision differ by rounding only.
    assert (from_pil - from_tensor).abs().float().mean() < 3


def test_weights_replaced_at_the_same_path_are_loaded_again(tmp_path):
    import shutil

    from scoring.encoder_names import encoder_fingerprint
    from tests.scoring.tiny_clip import tiny_clip_files

    path = tmp_path / "w" / "encoder.pt"
    shutil.copyfile(tiny_clip_files(tmp_path / "w", seed=0), path)
    name = f"open_clip:{TINY_ARCH}:{path}"
    first = encoder_load(name)
    old = first.encode_texts(["a dog"])[0]
    shutil.copyfile(tiny_clip_files(tmp_path / "other", seed=1), path)
    second = encoder_load(name)
    assert second is not first and second.fingerprint == encoder_fingerprint(name) != first.fingerprint
    assert not torch.allclose(old, second.encode_texts(["a dog"])[0])
