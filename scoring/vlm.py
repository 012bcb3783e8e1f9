"""A vision-language model as a judge (MLM-Filter's four metrics) and as a caption rewriter (AITQE).

Plain PyTorch and transformers, no Django. ``vlm_load("vlm:<local dir or hub id>")`` loads any
transformers-native image-text-to-text checkpoint (LLaVA-hf, Qwen2-VL / Qwen2.5-VL, Idefics3 /
SmolVLM, ...) through ``AutoProcessor`` + ``AutoModelForImageTextToText``, checks it before returning
and caches it per name and device.

Judge (Wang et al. 2024, "Finetuned Multimodal Language Models Are High-Quality Image-Text Data
Filters"): four scores per image-caption pair, each 0-100 --

- ``itm`` Image-Text Matching: does the caption describe the image's overall content;
- ``odf`` Object Detail Fulfillment: are the objects' details (number, colour, size, position) right;
- ``ctq`` Caption Text Quality: the writing itself (grammar, fluency, word choice, structure);
- ``su`` Semantic Understanding: correct knowledge beyond the pixels (who, where, which event).

How a score is read. The prompt asks for ONE DIGIT from 0 to 9 and the score is the expected digit
under the model's next-token distribution, rescaled: ``score = 100/9 * sum_d d * p(d) / sum_d p(d)``.
One forward pass per metric per batch, no generation and no text parsing. A single digit because
tokenizers split numbers differently (Llama and Qwen write "85" as two tokens, GPT-2-style
vocabularies have "85" as one), while every tokenizer we know has each digit as its own token; ten
levels are enough for filtering, and the expectation is continuous, so pairs rarely tie (the
MLM-Filter models themselves were trained to write 0-100 as text, which would need decoding).

The digit tokens are found from the chat template itself at load time: the text the template puts
between the generation prompt and an assistant answer (e.g. the space after "ASSISTANT:") is
appended to every prompt, and each digit must then be exactly one token. A model without such
tokens, or one that puts less than ``MIN_SCORE_MASS`` of its next-token probability on the digits
(it is starting a sentence or refusing, and renormalising a minority of the mass would be a made-up
number), gets ``error = "the model did not answer with a score ..."`` and no number.

Pairs are batched by caption length (less padding), left-padded (the last position is then every
row's next token) with an attention mask; batched scores equal one-at-a-time scores to float
tolerance, and results come back in the caller's order. A caption longer than the context is
cut at the token level, keeping the template, the question and the image tokens whole, and the
result is flagged ``truncated``. An image the processor refuses fails only its own pair: a failed
batch is retried one pair at a time.

Rewriter (AITQE-style, "automatic image-text quality enhancement"): greedy decoding of a new caption
grounded in the image and the original caption; ``describe_images`` is the same path without a
caption (metadata expansion).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

METRICS = ("itm", "odf", "ctq", "su")

# Below this share of next-token probability on the ten digits, the model is not answering with a
# score. A judge asked for one digit puts well over 0.9 there; 0.5 leaves room for hedging.
MIN_SCORE_MASS = 0.5
DEFAULT_BATCH_SIZE = 16
# Batches are padded to their longest row, so one enormous caption would make every row that long;
# captions are cut to fit this many tokens (prompt and image included) even on long-context models.
MAX_CONTEXT = 4096
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Besides the weights and config.json, these files change what a score means (tokenization, image
# preprocessing, the conversation format), so they count in the fingerprint too.
_FINGERPRINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

SCORE_TEMPLATE = 'Caption: "{caption}"\n\n{question}\nAnswer with a single digit from 0 to 9.'
SCORE_QUESTIONS = {
    "itm": (
        "Image-text matching: how well does the caption describe the image as a whole - the scene, the "
        "main subjects and what is happening? 0 means the caption is unrelated to the image, 9 means it "
        "describes the image's main content exactly."
    ),
    "odf": (
        "Object detail: how accurately and completely does the caption describe the objects in the "
        "image - their number, colours, sizes, shapes and positions? 0 means no detail is correct, 9 "
        "means rich details that all match the image."
    ),
    "ctq": (
        "Caption text quality: judge only the writing of the caption - grammar, fluency, clarity, "
        "variety of words and sentence structure. 0 means unreadable text, 9 means well-written, "
        "fluent text."
    ),
    "su": (
        "Semantic understanding: does the caption add correct knowledge that the pixels alone do not "
        "make plain - who or what exactly is shown, where, which event, how the things relate? 0 means "
        "nothing beyond the obvious (or wrong claims), 9 means rich, correct context."
    ),
}
REWRITE_PROMPT = (
    'Original caption: "{caption}"\n\n'
    "Write a better caption for this image. Keep what the original caption says that the image "
    "confirms, correct what it gets wrong, add the important visible details it misses, and do not "
    "invent anything the image does not show. Answer with the new caption only, in one or two "
    "sentences."
)
DESCRIBE_PROMPT = (
    "Describe this image in one or two sentences: the main subjects, what they are doing, the setting "
    "and any visible text. Answer with the description only."
)
PROMPTS_SHA256 = hashlib.sha256(
    "\n".join([SCORE_TEMPLATE, *SCORE_QUESTIONS.values(), REWRITE_PROMPT, DESCRIBE_PROMPT]).encode()
).hexdigest()


class VlmError(ValueError):
    """A VLM name or checkpoint that cannot be used; the message says which and why."""


@dataclass
class VlmScores:
    """The four MLM-Filter scores of one pair, each 0-100; ``None`` where ``error`` says why."""

    itm: float | None = None
    odf: float | None = None
    ctq: float | None = None
    su: float | None = None
    error: str = ""
    truncated: bool = False


@dataclass
class RewriteResult:
    """A model-written caption; ``text`` is empty when ``error`` says why."""

    text: str = ""
    error: str = ""
    truncated: bool = False


# --- the scorer ---------------------------------------------------------------------------------


def _length_sorted_chunks(captions: list[str], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar caption length: a batch is padded to its longest row, so mixing
    a 3-word and a 60-word caption would make the short one pay for the long one."""
    order = sorted(range(len(captions)), key=lambda i: len(str(captions[i])))
    size = max(1, batch_size)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _exception_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _describe_image(image) -> str:
    try:
        return f"{image.size[0]}x{image.size[1]} {image.mode}"
    except Exception:  # noqa: BLE001 - only for the message
        return type(image).__name__


class VlmScorer:
    """A loaded image-text-to-text model with its processor; thread-safe (one forward at a time)."""

    def __init__(self, name: str, directory: Path, device: torch.device, model, processor, fingerprint: str):
        self.name, self.directory, self.device = name, directory, device
        # What a score means depends on the weights, tokenizer and template (the files' fingerprint) and
        # on the questions asked: scores are keyed by both, so changing either makes new rows.
        self.fingerprint = hashlib.sha256(f"{fingerprint}:{PROMPTS_SHA256}".encode()).hexdigest()
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # the last position is then the next token of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_type = model.config.model_type
        text_config = model.config.get_text_config()
        context = int(getattr(text_config, "max_position_embeddings", 0) or MAX_CONTEXT)
        tokenizer_limit = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        if 0 < tokenizer_limit < context:
            context = tokenizer_limit
        # Callers may lower it further (shorter batches, less memory).
        self.context_length = min(context, MAX_CONTEXT)
        self._lock = threading.Lock()
        self._dtype = next(model.parameters()).dtype
        self._answer_prefix, self._score_ids, self._score_problem = self._find_score_tokens()
        # The longest question first: its batch decides the caption cuts that all four then share.
        self._metric_order = sorted(METRICS, key=lambda m: -len(self.tokenizer(SCORE_QUESTIONS[m]).input_ids))

    def __repr__(self) -> str:
        return f"<VlmScorer {self.name} {self.model_type} on {self.device}>"

    # prompts -------------------------------------------------------------------------------------

    def _render(self, text: str, *, answer: str | None = None) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=answer is None, tokenize=False
        )

    def _score_text(self, metric: str, caption: str) -> str:
        prompt = SCORE_TEMPLATE.format(caption=caption, question=SCORE_QUESTIONS[metric])
        return self._render(prompt) + self._answer_prefix

    def _find_score_tokens(self) -> tuple[str, list[int] | None, str]:
        """(answer prefix, the token id of each digit 0-9 after it, or None and why)."""
        probe = self._render("x")
        prefix = ""
        try:
            answered = self._render("x", answer="5")
            if answered.startswith(probe) and "5" in answered[len(probe) :]:
                prefix = answered[len(probe) : len(probe) + answered[len(probe) :].index("5")]
        except Exception:  # noqa: BLE001 - a template that cannot render an answer: no prefix
            prefix = ""

        def encode(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False).input_ids

        # The prefix as text (e.g. "ASSISTANT: " then "7"), or, where the tokenizer merges the space
        # into the digit ("Ġ7"), without its trailing whitespace and with the merged tokens.
        for kept in dict.fromkeys([prefix, prefix.rstrip()]):
            base = encode(probe + kept)
            ids = []
            for digit in range(10):
                full = encode(probe + prefix + str(digit))
                if len(full) != len(base) + 1 or full[: len(base)] != base:
                    break
                if self.tokenizer.decode([full[-1]]).strip() != str(digit):
                    break
                ids.append(full[-1])
            if len(ids) == 10 and len(set(ids)) == 10:
                return kept, ids, ""
        return (
            prefix,
            None,
            "its vocabulary has no single token for each digit 0-9 after the answer prompt",
        )

    # inputs --------------------------------------------------------------------------------------

    def _encode(self, images: list, texts: list[str]):
        # verbose=False: rows longer than the context are expected here (``_fit`` cuts them next).
        kwargs = {"images": images, "text": texts, "padding": True, "return_tensors": "pt", "verbose": False}
        bos = self.tokenizer.bos_token
        # As transformers' own apply_chat_template: a template that writes the BOS itself must not get
        # a second one from the tokenizer.
        if bos is not None and texts and texts[0].startswith(bos):
            kwargs["add_special_tokens"] = False
        return self.processor(**kwargs)

    def _fit(self, images: list, captions: list[str], make_text, limit: int):
        """Encode the batch; a caption whose row exceeds ``limit`` tokens is cut (token level) to fit.

        Returns (inputs, captions as used, truncated flags). The template, the question and the image
        tokens are never cut.
        """
        captions, truncated = list(captions), [False] * len(captions)
        caption_ids = self.tokenizer(captions, add_special_tokens=False, verbose=False).input_ids
        for i, ids in enumerate(caption_ids):
            if len(ids) > limit:  # certainly too long: cut before paying for a huge encode
                captions[i], truncated[i] = self.tokenizer.decode(ids[:limit]), True
        inputs = self._encode(images, [make_text(c) for c in captions])
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        over = [i for i, length in enumerate(lengths) if length > limit]
        if not over:
            return inputs, captions, truncated
        for i in over:
            captions[i], truncated[i] = self._cut(images[i], captions[i], make_text, limit, lengths[i]), True
        return self._encode(images, [make_text(c) for c in captions]), captions, truncated

    def _cut(self, image, caption: str, make_text, limit: int, length: int) -> str:
        ids = self.tokenizer(caption, add_special_tokens=False, verbose=False).input_ids
        keep = len(ids) - (length - limit)
        while keep > 0:
            cut = self.tokenizer.decode(ids[:keep])
            length = int(self._encode([image], [make_text(cut)])["attention_mask"].sum())
            if length <= limit:
                return cut
            # Re-tokenising at the cut can shift a token or two; step back by the overshoot.
            keep -= max(1, length - limit)
        length = int(self._encode([image], [make_text("")])["attention_mask"].sum())
        raise VlmError(
            f"the prompt and the image alone take {length} tokens, more than the {limit} the model can read"
        )

    def _to_device(self, inputs):
        return inputs.to(self.device).to(self._dtype)  # BatchFeature casts only floating tensors

    # scoring -------------------------------------------------------------------------------------

    def score_pairs(
        self, images: list[PILImage.Image], captions: list[str], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[VlmScores]:
        """The four MLM-Filter scores (0-100) of each (image, caption) pair, in order."""
        if len(images) != len(captions):
            raise VlmError(f"score_pairs: {len(images)} images but {len(captions)} captions")
        results = [VlmScores() for _ in images]
        if self._score_ids is None:
            for result in results:
                result.error = f"the model did not answer with a score: {self._score_problem}"
            return results
        for chunk in _length_sorted_chunks(captions, batch_size):
            self._score_chunk(
                [images[i] for i in chunk], [captions[i] for i in chunk], [results[i] for i in chunk]
            )
        return results

    def _score_chunk(self, images, captions, out: list[VlmScores]) -> None:
        try:
            with self._lock:
                batch = self._score_batch(list(images), [str(c) for c in captions])
        except Exception as exc:  # noqa: BLE001 - one bad pair must not sink its batch
            if len(images) > 1:
                for i in range(len(images)):
                    self._score_chunk(images[i : i + 1], captions[i : i + 1], out[i : i + 1])
                return
            out[0].error = self._pair_error(images[0], exc)
            return
        for result, (scores, error, truncated) in zip(out, batch, strict=True):
            for metric, value in scores.items():
                setattr(result, metric, value)
            result.truncated, result.error = truncated, error

    @staticmethod
    def _pair_error(image, exc: BaseException) -> str:
        if isinstance(exc, VlmError):
            return str(exc)
        where = f"image {_describe_image(image)}"
        return f"the model's processor or forward pass refused this pair ({where}): {_exception_text(exc)}"

    @torch.inference_mode()
    def _score_batch(self, images, captions):
        n = len(images)
        scores = [dict.fromkeys(METRICS) for _ in range(n)]
        low_mass: list[dict[str, float]] = [{} for _ in range(n)]
        non_finite: list[list[str]] = [[] for _ in range(n)]
        fitted, truncated = captions, [False] * n
        ids = torch.tensor(self._score_ids)
        weights = torch.arange(10, dtype=torch.float32)
        for k, metric in enumerate(self._metric_order):
            if k == 0:
                inputs, fitted, truncated = self._fit(
                    images, captions, lambda c, m=metric: self._score_text(m, c), self.context_length
                )
            else:
                inputs = self._encode(images, [self._score_text(metric, c) for c in fitted])
            logits = self.model(**self._to_device(inputs), logits_to_keep=1).logits[:, -1, :].float().cpu()
            digits = torch.softmax(logits, dim=-1)[:, ids]
            mass = digits.sum(dim=1)
            expected = (digits * weights).sum(dim=1) / mass.clamp_min(1e-12)
            for i in range(n):
                if not torch.isfinite(logits[i]).all():
                    non_finite[i].append(metric)
                elif mass[i] < MIN_SCORE_MASS:
                    low_mass[i][metric] = float(mass[i])
                else:
                    scores[i][metric] = float(expected[i]) * 100.0 / 9.0
        errors = []
        for i in range(n):
            parts = []
            if low_mass[i]:
                ordered = [m for m in METRICS if m in low_mass[i]]
                shares = ", ".join(f"{low_mass[i][m]:.1%}" for m in ordered)
                parts.append(
                    f"the model did not answer with a score for {', '.join(ordered)} (only {shares} of its "
                    f"next-token probability was on the digits 0-9; {MIN_SCORE_MASS:.0%} needed)"
                )
            if non_finite[i]:
                parts.append(f"the model returned non-finite logits for {', '.join(non_finite[i])}")
            errors.append("; ".join(parts))
        return list(zip(scores, errors, truncated, strict=True))

    # rewriting -----------------------------------------------------------------------------------

    def rewrite_captions(
        self,
        images: list[PILImage.Image],
        captions: list[str],
        max_new_tokens: int = 64,
        batch_size: int = 8,
    ) -> list[RewriteResult]:
        """A new caption per pair, grounded in the image and the original caption (greedy decoding)."""
        if len(images) != len(captions):
            raise VlmError(f"rewrite_captions: {len(images)} images but {len(captions)} captions")
        return self._generate(images, [str(c) for c in captions], REWRITE_PROMPT, max_new_tokens, batch_size)

    def describe_images(
        self, images: list[PILImage.Image], max_new_tokens: int = 64, batch_size: int = 8
    ) -> list[str]:
        """A model-written description per image; "" where the image could not be described (logged)."""
        results = self._generate(images, [""] * len(images), DESCRIBE_PROMPT, max_new_tokens, batch_size)
        for i, result in enumerate(results):
            if result.error:
                logger.warning("%s could not describe image %d: %s", self.name, i, result.error)
        return [result.text for result in results]

    def _generate(self, images, captions, prompt, max_new_tokens, batch_size) -> list[RewriteResult]:
        results = [RewriteResult() for _ in images]
        for chunk in _length_sorted_chunks(captions, batch_size):
            self._generate_chunk(
                [images[i] for i in chunk],
                [captions[i] for i in chunk],
                prompt,
                max_new_tokens,
                [results[i] for i in chunk],
            )
        return results

    def _generate_chunk(self, images, captions, prompt, max_new_tokens, out: list[RewriteResult]) -> None:
        try:
            with self._lock:
                texts, truncated = self._generate_batch(list(images), list(captions), prompt, max_new_tokens)
        except Exception as exc:  # noqa: BLE001
            if len(images) > 1:
                for i in range(len(images)):
                    self._generate_chunk(
                        images[i : i + 1], captions[i : i + 1], prompt, max_new_tokens, out[i : i + 1]
                    )
                return
            out[0].error = self._pair_error(images[0], exc)
            return
        for result, text, cut in zip(out, texts, truncated, strict=True):
            result.text, result.truncated = text, cut
            if not text:
                result.error = "the model returned an empty caption"

    @torch.inference_mode()
    def _generate_batch(self, images, captions, prompt, max_new_tokens):
        limit = self.context_length - max_new_tokens
        if limit <= 0:
            raise VlmError(
                f"max_new_tokens={max_new_tokens} leaves no room in a {self.context_length}-token context"
            )
        inputs, _, truncated = self._fit(
            images, captions, lambda c: self._render(prompt.format(caption=c)), limit
        )
        inputs = self._to_device(inputs)
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [_strip_scaffolding(t) for t in texts], truncated


# Role markers or labels a model may repeat before its answer, and quotes around the whole answer.
_LEADING_SCAFFOLD = re.compile(
    r"^\s*(?:assistant\s*(?::|\n)|(?:new |better |improved )?(?:caption|description)\s*:)",
    re.IGNORECASE,
)


def _strip_scaffolding(text: str) -> str:
    text = text.strip()
    previous = None
    while previous != text:
        previous = text
        text = _LEADING_SCAFFOLD.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return " ".join(text.split())


# --- loading ------------------------------------------------------------------------------------


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise VlmError(f"Unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VlmError(f"Device {device!r} requested but no CUDA GPU is available.")
    return dev


def vlm_name_check(name: str) -> str:
    """Validate a name's shape without loading anything; returns the part after ``vlm:``."""
    kind, _, rest = name.partition(":")
    if kind != "vlm" or not rest:
        raise VlmError(
            f"Unknown VLM {name!r}: use vlm:<local directory saved with save_pretrained> or "
            "vlm:<hub id> such as vlm:Qwen/Qwen2-VL-2B-Instruct."
        )
    path = Path(rest).expanduser()
    if path.exists() and not path.is_dir():
        raise VlmError(f"VLM {name!r}: {rest} is a file; expected a directory holding a checkpoint.")
    if not path.is_dir() and (rest.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(rest)):
        raise VlmError(f"VLM {name!r}: {rest} is neither an existing directory nor a hub id (owner/model).")
    return rest


def _resolve_directory(name: str, rest: str) -> Path:
    path = Path(rest).expanduser()
    if path.is_dir():
        return path
    return _hub_snapshot(name, rest)


def _hub_snapshot(name: str, repo_id: str) -> Path:
    """Download (or find in the local cache) what a checkpoint needs; offline, the cache only."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.safetensors"]
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(path.glob("*.safetensors")):  # older checkpoints ship only PyTorch pickles
            path = Path(snapshot_download(repo_id, allow_patterns=[*patterns, "*.bin"]))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear error
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        hint = (
            " HF_HUB_OFFLINE is set, so only the local Hugging Face cache is searched; download it on a "
            "machine with internet or point vlm: at a local directory."
            if offline
            else ""
        )
        raise VlmError(
            f"VLM {name!r}: cannot get {repo_id} from the Hugging Face hub: {_exception_text(exc)}.{hint}"
        ) from exc
    return path


_file_hashes: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    # The Hugging Face cache names each large file's blob by its sha256: no need to read 5 GB again.
    target = path.resolve()
    if path.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    stat = target.stat()
    key = (str(target), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(target, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def vlm_fingerprint(directory: str | os.PathLike) -> str:
    """sha256 over the weight files' sha256s, config.json and the tokenizer/processor/template files.

    Replacing the weights (or the chat template) at the same path changes it.
    """
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and (path.name.endswith(WEIGHT_SUFFIXES) or path.name in _FINGERPRINT_FILES):
            digest.update(f"{path.name}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _stat_signature(directory: Path) -> tuple:
    """Cheap: sizes and mtimes; a changed file makes ``vlm_load`` load (and hash) afresh."""
    rows = []
    for path in sorted(directory.iterdir()):
        if path.is_file():
            stat = path.stat()
            rows.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(rows)


def _check_directory(name: str, directory: Path):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if not (directory / "config.json").is_file():
        raise VlmError(
            f"VLM {name!r}: {directory} has no config.json; expected a checkpoint saved with save_pretrained."
        )
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise VlmError(
            f"VLM {name!r}: config.json in {directory} is unreadable: {_exception_text(exc)}"
        ) from exc
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise VlmError(
            f"VLM {name!r}: {directory} holds a {config.model_type!r} model, which is not an image-text-to-text "
            "model (e.g. llava, qwen2_vl, qwen2_5_vl, idefics3, smolvlm)."
        )
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise VlmError(
            f"VLM {name!r}: {directory} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)."
        )
    if not any((directory / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        raise VlmError(
            f"VLM {name!r}: {directory} has no image processor config "
            "(preprocessor_config.json or processor_config.json)."
        )
    if not any(any(directory.glob(f"*{s}")) for s in WEIGHT_SUFFIXES):
        raise VlmError(f"VLM {name!r}: {directory} has no weight files (*.safetensors or *.bin).")


def _load_scorer(name: str, directory: Path, device: torch.device) -> VlmScorer:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _check_directory(name, directory)
    try:
        processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise VlmError(
            f"VLM {name!r}: cannot load the processor from {directory}: {_exception_text(exc)}"
        ) from exc
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise VlmError(
            f"VLM {name!r}: the processor in {directory} ({type(processor).__name__}) lacks a tokenizer or an "
            "image processor."
        )
    if not (getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)):
        raise VlmError(
            f"VLM {name!r}: {directory} has no chat template (chat_template.jinja, chat_template.json or "
            "chat_template in tokenizer_config.json); the prompts need the model's own conversation format."
        )
    if getattr(processor, "chat_template", None) is None:
        processor.chat_template = processor.tokenizer.chat_template
    # bf16 on GPUs (what these checkpoints are published in); fp32 on CPUs, where bf16 matmuls are slow.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        model = AutoModelForImageTextToText.from_pretrained(directory, local_files_only=True, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise VlmError(
            f"VLM {name!r}: cannot load the model from {directory}: {_exception_text(exc)}"
        ) from exc
    model = model.to(device).eval()
    return VlmScorer(name, directory, device, model, processor, vlm_fingerprint(directory))


_CACHE_SIZE = 2
_cache: OrderedDict[tuple[str, str], tuple[tuple, VlmScorer]] = OrderedDict()
_cache_lock = threading.Lock()


def vlm_load(name: str, device: str | None = None) -> VlmScorer:
    """The VLM called ``name`` (``vlm:<local dir>`` or ``vlm:<hub id>``), loaded once per process and
    device; files changed on disk since the last load are loaded afresh. Errors are not cached."""
    rest = vlm_name_check(name)
    dev = _device(device)
    with _cache_lock:
        directory = _resolve_directory(name, rest)
        signature = _stat_signature(directory)
        key = (name, str(dev))
        hit = _cache.get(key)
        if hit is not None and hit[0] == signature:
            _cache.move_to_end(key)
            return hit[1]
        _cache.pop(key, None)
        scorer = _load_scorer(name, directory, dev)
        _cache[key] = (signature, scorer)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return scorer


def vlm_cache_clear() -> None:
    with _cache_lock:
        _cache.clear()


# --- cost ---------------------------------------------------------------------------------------


def _text_config(config: dict) -> dict:
    return config.get("text_config") or config


def vlm_flops_per_pair(
    config: dict, image_tokens: int, text_tokens: int, *, forwards: int = len(METRICS)
) -> float:
    """Forward FLOPs to judge one pair: ``forwards`` passes (one per metric) over the image and prompt.

    ``config`` is a checkpoint's config.json as a dict (LLaVA-style: CLIP/SigLIP ``vision_config`` and
    ``text_config``; Qwen2-VL-style: ``vision_config`` with ``depth``/``embed_dim`` and the language
    model's fields at the top level or in ``text_config``). ``image_tokens`` is the number of image
    tokens the language model reads; ``text_tokens`` the template, prompt and caption tokens.

    Counted: 2 FLOPs per multiply-accumulate of every weight a token touches (attention projections,
    MLP, the vision projector/merger, patch embedding), plus attention scores and weighted sums
    (4 * d per query-key pair: causal in the language model, full in the vision tower), plus the output
    layer at the last position only (scoring reads one position). Norms, activations and softmax are
    left out (well under 1%).
    """
    text = _text_config(config)
    d = int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or d // heads)
    ffn = int(text["intermediate_size"])
    vocab = int(text["vocab_size"])
    n = image_tokens + text_tokens
    attn_weights = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2  # q, o + k, v
    mlp_weights = 3 * d * ffn  # gated MLP (gate, up, down)
    language = 2 * n * layers * (attn_weights + mlp_weights)
    language += layers * 4 * heads * head_dim * (n * (n + 1) / 2)  # causal scores + weighted sum
    language += 2 * d * vocab  # output layer, last position

    vision_cfg = config.get("vision_config") or {}
    vision = 0.0
    if "depth" in vision_cfg:  # Qwen2-VL: ViT over 14 px patches, 2x2 patches merged into one token
        e = int(vision_cfg.get("embed_dim") or vision_cfg["hidden_size"])
        merge = int(vision_cfg.get("spatial_merge_size", 2))
        patches = image_tokens * merge * merge
        mlp_hidden = int(vision_cfg.get("intermediate_size") or e * vision_cfg.get("mlp_ratio", 4))
        gated = "intermediate_size" in vision_cfg and "mlp_ratio" not in vision_cfg  # Qwen2.5-VL's SwiGLU
        block = 4 * e * e + (3 if gated else 2) * e * mlp_hidden
        patch_in = (
            int(vision_cfg.get("in_chans", vision_cfg.get("in_channels", 3)))
            * int(vision_cfg.get("temporal_patch_size", 2))
            * int(vision_cfg.get("patch_size", 14)) ** 2
        )
        out = int(vision_cfg.get("out_hidden_size") or vision_cfg.get("hidden_size") or d)
        if out == e:  # Qwen2-VL's "hidden_size" is the merger's output width, the LM's width
            out = d
        merged = e * merge * merge
        vision = 2 * patches * (int(vision_cfg["depth"]) * block + patch_in * e)
        vision += int(vision_cfg["depth"]) * 4 * e * patches * patches  # full attention within the image
        vision += 2 * image_tokens * (merged * merged + merged * out)
    elif vision_cfg:  # CLIP / SigLIP ViT, then a two-layer projector (LLaVA)
        e = int(vision_cfg.get("hidden_size", 1024))
        patch = int(vision_cfg.get("patch_size", 14))
        size = int(vision_cfg.get("image_size", 336))
        patches = (size // patch) ** 2 + 1
        depth = int(vision_cfg.get("num_hidden_layers", 24))
        block = 4 * e * e + 2 * e * int(vision_cfg.get("intermediate_size", 4 * e))
        vision = 2 * patches * (depth * block + 3 * patch * patch * e)
        vision += depth * 4 * e * patches * patches
        vision += 2 * image_tokens * (e * d + d * d)
    return float(forwards * (language + vision))
