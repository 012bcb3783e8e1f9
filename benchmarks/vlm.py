"""VLM judge throughput (four MLM-Filter metrics per pair), batched vs one pair at a time, in one run;
plus the forward FLOPs per pair of a 2B-class model and of the tiny test model.

    python benchmarks/vlm.py                       # tiny LLaVA, 128 pairs, batch 16, one thread
    python benchmarks/vlm.py --family qwen2_vl --pairs 64

The model is the tests' tiny random checkpoint (``tests/scoring/tiny_vlm.py``, ~150k parameters),
loaded through ``vlm_load("vlm:<dir>")`` as users load theirs. At this size a forward pass costs
almost nothing, so the figures measure the scorer's overhead per call (processor, template, Python)
and how much batching amortises it; they say nothing about a real model's speed. For that, the FLOPs
rows estimate a 2B-class model's cost per pair (no weights can be downloaded here).

Both paths score the same pairs (64x48 noise images, captions of 3 to 30 random words by default) in
the same process, alternating, three rounds; the median of each is reported. One intra-op thread by
default: on a shared two-core machine two OpenMP threads spin against other processes and run
several times slower.

Prints a Markdown table to paste into docs/vlm.md; ``--json`` writes the figures too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Qwen/Qwen2-VL-2B-Instruct, config.json as published on the Hugging Face hub (model card: "Qwen2-VL-2B";
# these dimensions reproduce its 2.21B parameters: 1.54B language model incl. 0.23B tied embeddings,
# 0.67B vision tower and merger).
QWEN2_VL_2B_INSTRUCT = {
    "model_type": "qwen2_vl",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}
# Template + system prompt + the longest metric question + a 20-30 word caption, in Qwen2 tokens.
TEXT_TOKENS_2B = 128
# Qwen2-VL image tokens: one per 28x28 pixels after its resize (2x2 merged 14 px patches).
IMAGE_CASES_2B = {"448x448": 256, "896x672": 768}


def make_pairs(n: int, words_range: tuple[int, int] = (3, 30), seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = [
        "a",
        "dog",
        "cat",
        "red",
        "car",
        "house",
        "street",
        "person",
        "riding",
        "bicycle",
        "blue",
        "sofa",
        "plate",
        "of",
        "pasta",
        "near",
        "the",
        "lake",
    ]
    images, captions = [], []
    for _ in range(n):
        images.append(Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)))
        length = int(rng.integers(words_range[0], words_range[1] + 1))
        captions.append(" ".join(rng.choice(words, size=length)))
    return images, captions


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="llava", choices=["llava", "qwen2_vl"])
    parser.add_argument("--pairs", type=int, default=128, help="pairs per batched round")
    parser.add_argument("--single-pairs", type=int, default=32, help="pairs per one-at-a-time round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--caption-words",
        default="3-30",
        help="caption length range in words (web alt-text averages 10-15 words; MLM-Filter's own "
        "judging data is similar)",
    )
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from scoring.vlm import vlm_flops_per_pair, vlm_load
    from tests.scoring.tiny_vlm import build_tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        directory = build_tiny_vlm(Path(tmp) / "tiny", args.family)
        scorer = vlm_load(f"vlm:{directory}", device="cpu")
        low, _, high = args.caption_words.partition("-")
        images, captions = make_pairs(max(args.pairs, args.single_pairs), (int(low), int(high or low)))
        scorer.score_pairs(images[: args.batch_size], captions[: args.batch_size], batch_size=args.batch_size)
        batched, single = [], []
        for _ in range(args.rounds):
            batched.append(
                args.pairs
                / timed(
                    lambda: scorer.score_pairs(images[: args.pairs], captions[: args.pairs], args.batch_size)
                )
            )
            n = args.single_pairs
            single.append(n / timed(lambda n=n: scorer.score_pairs(images[:n], captions[:n], batch_size=1)))
        results = scorer.score_pairs(images[:8], captions[:8])
        assert all(not r.error for r in results), [r.error for r in results]

        # The tiny model's token counts, measured: image tokens and the longest metric's prompt.
        inputs = scorer._encode(images[:1], [scorer._score_text("su", captions[0])])
        image_token_id = scorer.model.config.image_token_id
        tiny_image = int((inputs["input_ids"] == image_token_id).sum())
        tiny_text = int(inputs["attention_mask"].sum()) - tiny_image
        tiny_config = scorer.model.config.to_dict()
        tiny_params = sum(p.numel() for p in scorer.model.parameters())

    batched_rate, single_rate = statistics.median(batched), statistics.median(single)
    tiny_flops = vlm_flops_per_pair(tiny_config, tiny_image, tiny_text)
    flops_2b = {}
    for label, image_tokens in IMAGE_CASES_2B.items():
        total = vlm_flops_per_pair(QWEN2_VL_2B_INSTRUCT, image_tokens, TEXT_TOKENS_2B)
        language_only = vlm_flops_per_pair(
            {k: v for k, v in QWEN2_VL_2B_INSTRUCT.items() if k != "vision_config"},
            image_tokens,
            TEXT_TOKENS_2B,
        )
        flops_2b[label] = {
            "image_tokens": image_tokens,
            "flops": total,
            "vision_share": 1 - language_only / total,
        }

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"VLM judge benchmark, {dt.date.today().isoformat()}, {machine}, load average {load:.1f}")
    print(
        f"tiny {args.family}: {tiny_params:,} parameters, {tiny_image} image + {tiny_text} text tokens "
        f"per prompt (first caption); captions of {args.caption_words} words; {args.rounds} rounds, median\n"
    )
    print("| path | pairs | pairs/s (4 metrics each) | all rounds |")
    print("|---|---|---|---|")
    print(
        f"| one pair at a time | {args.single_pairs} | {single_rate:.1f} | "
        f"{', '.join(f'{r:.1f}' for r in single)} |"
    )
    print(
        f"| batched, batch {args.batch_size} | {args.pairs} | {batched_rate:.1f} | "
        f"{', '.join(f'{r:.1f}' for r in batched)} |"
    )
    print(f"\nbatched / one at a time: **{batched_rate / single_rate:.1f}x**\n")
    print("| model | image | image + text tokens | forward FLOPs per pair (4 metrics) | vision tower share |")
    print("|---|---|---|---|---|")
    for label, row in flops_2b.items():
        print(
            f"| Qwen2-VL-2B-Instruct (2.21B) | {label} | {row['image_tokens']} + {TEXT_TOKENS_2B} | "
            f"{row['flops'] / 1e12:.2f} TFLOP | {row['vision_share']:.0%} |"
        )
    print(
        f"| tiny {args.family} ({tiny_params / 1e3:.0f}k) | 64x48 | {tiny_image} + {tiny_text} | "
        f"{tiny_flops / 1e6:.1f} MFLOP | |"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": dt.date.today().isoformat(),
                    "machine": machine,
                    "load_average": load,
                    "family": args.family,
                    "batch_size": args.batch_size,
                    "batched_pairs_per_s": batched,
                    "single_pairs_per_s": single,
                    "speedup": batched_rate / single_rate,
                    "tiny_flops_per_pair": tiny_flops,
                    "qwen2_vl_2b_flops_per_pair": flops_2b,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
