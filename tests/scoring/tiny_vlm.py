"""Tiny vision-language models with random weights, saved with ``save_pretrained`` and loaded the way
users load theirs (``vlm_load("vlm:<dir>")``). Two families, so the scorer is tested on both layouts
it meets in practice:

- ``llava``: a CLIP ViT + a Llama (the llava-hf layout): a fixed number of image tokens, a BOS token
  written by the template, "ASSISTANT: 7" answers (a space before the digit);
- ``qwen2_vl``: Qwen2-VL's dynamic-resolution ViT + a Qwen2 with multimodal RoPE: the number of image
  tokens follows the image size, no BOS, "<|im_start|>assistant\n7" answers.

Nothing is downloaded: the tokenizer is trained here, on a small built-in corpus (which includes the
scorer's prompts), with the ``tokenizers`` library. Seeded, so two builds with the same arguments
write the same weights. About 150k parameters; a build takes well under a second after the imports.

A random model answers a "rate it 0-9" prompt with any of its few hundred tokens, so it would never
pass the scorer's probability-mass check. ``judge=True`` (the default) makes it behave like a judge
that answers with a digit: one embedding column is a constant feature, and only the digits' rows of
the output layer read it, so every next-token distribution leans towards the digits while the
choice among them still depends on the image and the caption (the rest of the weights stay random).
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llava", "qwen2_vl")
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A LLaVA-1.5-like template: "USER: <image>\n... ASSISTANT: 7</s>".
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Qwen2-VL's template, without video and vision ids.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "a photo of a dog on the grass",
    "a red car parked next to a white house",
    "two cats sleeping on a blue sofa",
    "a plate of pasta with tomato sauce and basil",
    "a man riding a bicycle down a busy street at night",
    "the caption describes the image well and names every object",
    "rate how well the caption matches the image on a scale from zero to nine",
    "answer with a single digit",
    "object detail fulfillment, caption text quality, semantic understanding",
    "image text matching: does the caption describe what the picture shows?",
    "write a new caption for the image that keeps what is true and fixes what is wrong",
    "describe this image in one or two sentences",
    "USER: ASSISTANT:",
    'Caption: "a group of people standing in front of a mountain lake"',
]
_DIGIT_LINES = [
    "score 0 1 2 3 4 5 6 7 8 9",
    "there are 3 apples, 12 eggs and 7 birds in 2024",
    "ASSISTANT: 9 ASSISTANT: 4 ASSISTANT: 0",
]


def tiny_tokenizer(*, digits: bool = True, family: str = "llava"):
    """A byte-level BPE tokenizer trained on the built-in corpus; each digit is its own token.

    ``digits=False`` trains without digits and without the byte alphabet, so a digit becomes
    ``<unk>``: a model that has no score tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from scoring.vlm import DESCRIBE_PROMPT, REWRITE_PROMPT, SCORE_QUESTIONS, SCORE_TEMPLATE

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digits split one by one (as Llama and Qwen do), so "10" is never one token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    qwen = family == "qwen2_vl"
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=SPECIAL_TOKENS + (QWEN_SPECIAL_TOKENS if qwen else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if digits else [],
        show_progress=False,
    )
    # The prompts are in the corpus so they take a few dozen tokens, not one per character.
    prompts = [SCORE_TEMPLATE, *SCORE_QUESTIONS.values(), REWRITE_PROMPT, DESCRIBE_PROMPT]
    corpus = (_CORPUS + prompts) * 3 + (_DIGIT_LINES if digits else [])
    if not digits:
        corpus = ["".join(ch for ch in line if not ch.isdigit()) for line in corpus]
    tok.train_from_iterator(corpus, trainer=trainer)
    if qwen:  # no BOS, as Qwen2
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            unk_token="<unk>",
            padding_side="left",
            model_max_length=512,
        )
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=512,
    )


def build_tiny_vlm(
    directory: str | Path, family: str = "llava", *, seed: int = 0, digits: bool = True, judge: bool = True
) -> Path:
    """Write a tiny random image-text-to-text checkpoint of ``family`` into ``directory``; return it."""
    from transformers import GenerationConfig

    if family not in FAMILIES:
        raise ValueError(f"tiny VLM family {family!r}: expected one of {', '.join(FAMILIES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(digits=digits, family=family)
    torch.manual_seed(seed)
    if family == "llava":
        model, processor = _llava(tokenizer)
    else:
        model, processor = _qwen2_vl(tokenizer)
    model.eval()
    if judge and digits:
        _lean_towards_digits(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# A large init range: with the usual 0.02 a two-layer random model barely mixes its inputs, and the
# tests need scores that move with the image and the caption.
_INIT_RANGE = 0.2


def _llava(tokenizer):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    image_size, patch = 32, 8
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=32,
        initializer_range=_INIT_RANGE,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=_INIT_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config), processor


def _qwen2_vl(tokenizer):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    patch, merge = 4, 2
    # 16x16 to 32x32 pixels after resizing: 4 to 16 image tokens, depending on the image's shape.
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch, temporal_patch_size=2, merge_size=merge, min_pixels=16 * 16, max_pixels=32 * 32
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=patch, temporal_patch_size=2, merge_size=merge),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "initializer_range": _INIT_RANGE,
            # head_dim 12 = 2 * (2 + 2 + 2): temporal, height and width sections of the multimodal RoPE
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 10000.0},
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 48,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": patch,
            "temporal_patch_size": 2,
            "spatial_merge_size": merge,
            "initializer_range": _INIT_RANGE,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen2VLForConditionalGeneration(config), processor


@torch.no_grad()
def _lean_towards_digits(model, tokenizer, feature: float = 8.0, strength: float = 12.0) -> None:
    # Measured on both families over varied images and captions: at least 99.9% of the next-token
    # probability on the digits, while the expected digit still spreads over tens of points.
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    embed[:, 0] = feature  # a constant feature on every text token
    head[:, 0] = 0.0
    for d in range(10):
        head[tokenizer.convert_tokens_to_ids(str(d)), 0] = strength
