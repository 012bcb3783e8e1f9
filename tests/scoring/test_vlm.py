"""The VLM judge and rewriter on tiny random checkpoints (LLaVA and Qwen2-VL layouts) built on disk.

Random weights: these tests check the plumbing (loading, prompts, score reading, batching,
truncation, errors), never the quality of a score.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from scoring.vlm import (
    METRICS,
    MIN_SCORE_MASS,
    VlmError,
    VlmScorer,
    _strip_scaffolding,
    vlm_flops_per_pair,
    vlm_load,
)
from tests.scoring.tiny_vlm import build_tiny_vlm

QWEN2_VL_2B = {  # the published Qwen/Qwen2-VL-2B-Instruct dimensions (see benchmarks/vlm.py)
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two OpenMP threads on a shared two-core machine spin against other processes and run many
    # times slower than one; the scorer itself leaves threading to the deployment.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return {
        family: build_tiny_vlm(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        for family in ("llava", "qwen2_vl")
    }


@pytest.fixture(scope="module")
def llava(tiny_dirs) -> VlmScorer:
    return vlm_load(f"vlm:{tiny_dirs['llava']}", device="cpu")


@pytest.fixture(scope="module")
def qwen(tiny_dirs) -> VlmScorer:
    return vlm_load(f"vlm:{tiny_dirs['qwen2_vl']}", device="cpu")


@pytest.fixture(params=["llava", "qwen2_vl"])
def scorer(request, llava, qwen) -> VlmScorer:
    return {"llava": llava, "qwen2_vl": qwen}[request.param]


def noise_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def truncated_jpeg() -> Image.Image:
    buffer = io.BytesIO()
    noise_image(99).save(buffer, "JPEG")
    data = buffer.getvalue()
    return Image.open(io.BytesIO(data[: len(data) // 2]))


# Different lengths and image sizes, so a batch needs padding (and Qwen2-VL's image-token counts differ).
IMAGES = [noise_image(i, size=(24 + 9 * i, 20 + 5 * i)) for i in range(6)]
CAPTIONS = [
    "a dog",
    "a red car parked next to a white house",
    "two cats sleeping on a blue sofa in the afternoon sun",
    "pasta",
    "a man riding a bicycle down a busy street at night, with lights",
    "x",
]


def score_tuple(scores) -> tuple:
    return tuple(getattr(scores, metric) for metric in METRICS)


def test_loads_through_vlm_name_and_is_cached(tiny_dirs, llava):
    again = vlm_load(f"vlm:{tiny_dirs['llava']}", device="cpu")
    assert again is llava
    assert llava.name == f"vlm:{tiny_dirs['llava']}"
    assert llava.model_type == "llava"
    assert len(llava.fingerprint) == 64


def test_four_scores_per_pair_between_0_and_100(scorer):
    results = scorer.score_pairs(IMAGES, CAPTIONS)
    assert len(results) == len(IMAGES)
    for result in results:
        assert result.error == ""
        assert not result.truncated
        for value in score_tuple(result):
            assert 0.0 <= value <= 100.0
    # The check below (batched == one by one) means something only if scores move with the input.
    itm = [result.itm for result in results]
    assert max(itm) - min(itm) > 1.0


def test_scores_are_deterministic(scorer):
    first = [score_tuple(r) for r in scorer.score_pairs(IMAGES, CAPTIONS)]
    second = [score_tuple(r) for r in scorer.score_pairs(IMAGES, CAPTIONS)]
    assert first == second


def test_batched_scores_equal_one_by_one(scorer):
    batched = scorer.score_pairs(IMAGES, CAPTIONS, batch_size=4)
    single = scorer.score_pairs(IMAGES, CAPTIONS, batch_size=1)
    for b, s in zip(batched, single, strict=True):
        assert np.allclose(score_tuple(b), score_tuple(s), atol=1e-3)


def test_refused_image_errors_only_its_own_pair(llava):
    images = [IMAGES[0], truncated_jpeg(), IMAGES[1], Image.new("RGB", (0, 0))]
    results = llava.score_pairs(images, ["a dog", "a dog", "a car", "a car"], batch_size=4)
    assert results[1].error and results[3].error
    assert "truncated" in results[1].error
    assert "0x0" in results[3].error
    assert score_tuple(results[1]) == (None,) * 4 and score_tuple(results[3]) == (None,) * 4
    alone = llava.score_pairs([IMAGES[0], IMAGES[1]], ["a dog", "a car"])
    assert np.allclose(score_tuple(results[0]), score_tuple(alone[0]), atol=1e-3)
    assert np.allclose(score_tuple(results[2]), score_tuple(alone[1]), atol=1e-3)


def test_long_caption_is_truncated_and_flagged(scorer):
    long_caption = "a man riding a bicycle down a busy street at night " * 120  # far beyond 512 tokens
    results = scorer.score_pairs([IMAGES[0], IMAGES[1]], [long_caption, "a dog"])
    assert results[0].truncated and results[0].error == ""
    assert all(0.0 <= v <= 100.0 for v in score_tuple(results[0]))
    assert not results[1].truncated
    # The batch was padded to the cut row, which still fits the context.
    inputs, captions, truncated = scorer._fit(
        [IMAGES[0]], [long_caption], lambda c: scorer._score_text("itm", c), scorer.context_length
    )
    assert truncated == [True]
    assert inputs["input_ids"].shape[1] <= scorer.context_length
    assert long_caption.startswith(captions[0][:200])


def test_model_without_score_tokens_gives_an_error_not_a_number(tmp_path):
    directory = build_tiny_vlm(tmp_path / "no-digits", digits=False)
    scorer = vlm_load(f"vlm:{directory}", device="cpu")
    results = scorer.score_pairs(IMAGES[:2], CAPTIONS[:2])
    for result in results:
        assert score_tuple(result) == (None,) * 4
        assert "did not answer with a score" in result.error


def test_low_probability_on_digits_gives_an_error_not_a_number(tmp_path):
    # Random weights without the digit lean: the next token is almost never a digit.
    directory = build_tiny_vlm(tmp_path / "no-judge", judge=False)
    scorer = vlm_load(f"vlm:{directory}", device="cpu")
    results = scorer.score_pairs(IMAGES[:2], CAPTIONS[:2])
    for result in results:
        assert score_tuple(result) == (None,) * 4
        assert "did not answer with a score" in result.error
        assert f"{MIN_SCORE_MASS:.0%} needed" in result.error


def test_rewrite_gives_text_or_a_clear_error_per_pair(scorer):
    images = [IMAGES[0], Image.new("RGB", (0, 0)), IMAGES[2]]
    results = scorer.rewrite_captions(images, CAPTIONS[:3], max_new_tokens=8)
    assert len(results) == 3
    assert results[1].text == "" and "0x0" in results[1].error
    for result in (results[0], results[2]):
        assert (result.text and not result.error) or (not result.text and result.error)
    assert results[0].text  # the tiny judge always writes something (digits)
    again = scorer.rewrite_captions(images, CAPTIONS[:3], max_new_tokens=8)
    assert [r.text for r in again] == [r.text for r in results]  # greedy


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("ASSISTANT: A dog on grass.", "A dog on grass."),
        ('assistant\nNew caption: "A dog  on\ngrass."', "A dog on grass."),
        ("Assistant chef plating a dish.", "Assistant chef plating a dish."),
        ("  ", ""),
    ],
)
def test_rewrite_strips_chat_scaffolding(raw, clean):
    assert _strip_scaffolding(raw) == clean


def test_describe_images_gives_one_string_per_image(llava):
    descriptions = llava.describe_images([IMAGES[0], IMAGES[3]], max_new_tokens=6)
    assert len(descriptions) == 2 and all(isinstance(d, str) and d for d in descriptions)


def test_fingerprint_changes_when_the_weights_change(tiny_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "copy"
    shutil.copytree(tiny_dirs["llava"], directory)
    before = vlm_load(f"vlm:{directory}", device="cpu")
    weights = directory / "model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("lm_head.weight"))
    state[key] = state[key] + 0.01
    save_file(state, weights, metadata={"format": "pt"})
    after = vlm_load(f"vlm:{directory}", device="cpu")
    assert after is not before  # replaced on disk: loaded afresh
    assert after.fingerprint != before.fingerprint


@pytest.mark.parametrize(
    "damage, missing",
    [
        (lambda d: (d / "config.json").unlink(), "config.json"),
        (lambda d: (d / "chat_template.jinja").unlink(), "chat template"),
        (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")], "tokenizer"),
        (lambda d: (d / "processor_config.json").unlink(), "processor"),
        (lambda d: (d / "model.safetensors").unlink(), "weight files"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"model_type": "clip"})),
            "not an image-text-to-text model",
        ),
    ],
    ids=["no-config", "no-chat-template", "no-tokenizer", "no-processor", "no-weights", "clip-config"],
)
def test_not_a_vlm_directory_names_what_is_missing(tiny_dirs, tmp_path, damage, missing):
    directory = tmp_path / "damaged"
    shutil.copytree(tiny_dirs["llava"], directory)
    damage(directory)
    with pytest.raises(VlmError, match=missing):
        vlm_load(f"vlm:{directory}", device="cpu")


@pytest.mark.parametrize(
    "name, says",
    [
        ("hf:/some/dir", "use vlm:<local directory"),
        ("vlm:", "use vlm:<local directory"),
        ("vlm:/no/such/dir", "neither an existing directory nor a hub id"),
        ("vlm:loupe-tests/no-such-model", "cannot get loupe-tests/no-such-model"),  # HF_HUB_OFFLINE=1
    ],
)
def test_bad_names_are_refused_with_a_reason(name, says):
    with pytest.raises(VlmError, match=says):
        vlm_load(name, device="cpu")


def test_flops_of_a_2b_model_are_dominated_by_weights_and_scale_with_tokens(llava):
    one = vlm_flops_per_pair(QWEN2_VL_2B, image_tokens=256, text_tokens=128, forwards=1)
    # ~1.3B language-model weights over 384 tokens + a 0.6B ViT over 1024 patches, 2 FLOPs per MAC.
    assert 2.0e12 < one < 3.0e12
    assert vlm_flops_per_pair(QWEN2_VL_2B, 256, 128) == pytest.approx(4 * one)
    assert vlm_flops_per_pair(QWEN2_VL_2B, 256, 256, forwards=1) > one
    tiny = vlm_flops_per_pair(llava.model.config.to_dict(), image_tokens=16, text_tokens=100)
    assert 0 < tiny < one / 1000
