"""Exports of judgments: COCO-HF-style JSON and preference pairs JSONL, and the management command."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command

from annotate import services
from annotate.exports import judgments_coco_hf, pairs_from_ranking, preference_pairs_jsonl
from pool.models import Caption
from tests.annotate.factories import answer_for, campaign_with_tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def judged(annotators):
    """One task of four captions judged by two annotators, the first with a tie of the top two."""
    campaign = campaign_with_tasks(name="Export me", images=2, overlap=2)
    users = annotators(2)
    task = None
    for index, user in enumerate(users):
        assignment = services.task_next(campaign=campaign, user=user)
        task = assignment.task
        ranking, ratings = answer_for(task, tie_first_two=index == 0, rating=index + 2)
        services.judgment_submit(
            user=user, task=task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
        )
    return campaign, task


def test_pairs_from_ranking_with_a_tie():
    """5 > 3 = 9 > 1: six pairs, one of them (3, 9) a tie."""
    assert sorted(pairs_from_ranking([[5], [3, 9], [1]])) == sorted(
        [(5, 3, False), (5, 9, False), (5, 1, False), (3, 9, True), (3, 1, False), (9, 1, False)]
    )


def test_coco_hf_export_holds_image_captions_and_each_annotators_answer(judged):
    campaign, task = judged
    stream = io.StringIO()
    assert judgments_coco_hf(campaign=campaign, stream=stream) == 1
    document = json.loads(stream.getvalue())
    assert document["info"]["campaign"] == "Export me"
    (record,) = document["annotations"]
    assert record["task_id"] == task.pk and record["image"]["sha256"] == task.image.sha256
    assert [c["id"] for c in record["captions"]] == services.task_caption_ids(task)
    assert [j["annotator"] for j in record["judgments"]] == ["ann0", "ann1"]
    ids = services.task_caption_ids(task)
    assert record["judgments"][0]["ranking"][0] == ids[:2]
    assert record["judgments"][1]["ratings"][str(ids[0])]["accuracy"] == 3
    # Consensus of (a = b > c > d) and (a > b > c > d): mean ranks 1.25, 1.75, 3, 4 -> a > b > c > d.
    assert record["consensus"]["ranking"] == [[ids[0]], [ids[1]], [ids[2]], [ids[3]]]
    assert record["consensus"]["mean_ratings"][str(ids[0])]["accuracy"] == 2.5


def test_pairs_export_leaves_ties_out_and_weights_each_judgment_to_one(judged):
    campaign, task = judged
    stream = io.StringIO()
    stats: dict = {}
    # 2 judgments x C(4, 2) pairs, less the first annotator's one tie
    assert preference_pairs_jsonl(campaign=campaign, stream=stream, stats=stats) == 11
    assert stats["ties_excluded"] == 1 and stats["judgments"] == 2 and stats["tasks"] == 1
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    for judgment_id in {r["judgment_id"] for r in rows}:
        assert sum(r["weight"] for r in rows if r["judgment_id"] == judgment_id) == pytest.approx(1.0)
    assert not any(r["tie"] for r in rows)
    ids = services.task_caption_ids(task)
    strict = next(r for r in rows if r["annotator"] == "ann1" and r["chosen_id"] == ids[0])
    assert strict["rejected_id"] in ids[1:]
    assert strict["chosen"] == Caption.objects.get(pk=ids[0]).text
    assert strict["rejected"] == Caption.objects.get(pk=strict["rejected_id"]).text
    assert strict["prompt"] == f"<image sha256:{task.image.sha256}>\nCaption: "
    assert strict["image_sha256"] == task.image.sha256


def test_pairs_export_can_mark_ties_instead(judged):
    campaign, task = judged
    stream = io.StringIO()
    assert preference_pairs_jsonl(campaign=campaign, stream=stream, include_ties=True) == 12
    ties = [json.loads(line) for line in stream.getvalue().splitlines() if json.loads(line)["tie"]]
    ids = services.task_caption_ids(task)
    assert len(ties) == 1 and {ties[0]["chosen_id"], ties[0]["rejected_id"]} == set(ids[:2])


def test_the_preference_export_trains_a_trl_reward_model(judged, tmp_path):
    """The file as TRL's RewardTrainer takes it: loaded with HF datasets, tokenized by the trainer's
    own data step and trained for two steps (a tiny model and tokenizer built here, nothing downloaded)."""
    from datasets import load_dataset
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast
    from trl import RewardConfig, RewardTrainer

    campaign, _ = judged
    path = tmp_path / "preferences.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        preference_pairs_jsonl(campaign=campaign, stream=handle)
    dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert {"prompt", "chosen", "rejected"} <= set(dataset.column_names) and len(dataset) == 11

    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [row["prompt"] + row["chosen"] + " " + row["rejected"] for row in dataset]
    words.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=128,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    args = RewardConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = RewardTrainer(
        model=GPT2ForSequenceClassification(config),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    first = trainer.train_dataset[0]
    assert first["chosen_ids"] and first["rejected_ids"] and first["chosen_ids"] != first["rejected_ids"]
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0


def test_export_command_writes_and_refuses_to_overwrite(judged, tmp_path):
    campaign, _ = judged
    out = tmp_path / "pairs.jsonl"
    call_command("export_judgments", "--campaign", campaign.name, "--format", "pairs", "--out", str(out))
    assert len(out.read_text().splitlines()) == 11  # ties left out
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_judgments", "--campaign", campaign.name, "--format", "pairs", "--out", str(out))
    call_command(
        "export_judgments",
        "--campaign",
        campaign.name,
        "--format",
        "coco_hf",
        "--out",
        str(out),
        "--overwrite",
    )
    assert json.loads(out.read_text())["info"]["campaign"] == campaign.name


def test_export_command_names_the_campaigns_when_one_is_unknown(judged, tmp_path):
    with pytest.raises(CommandError, match="Export me"):
        call_command(
            "export_judgments", "--campaign", "nope", "--format", "pairs", "--out", str(tmp_path / "x")
        )
