from __future__ import annotations

import pytest

from annotate.models import Campaign, TaskCaption
from curate.models import Review
from curate.rewrite import RewriteRefused, rewrite_suggest, rewrite_suggestion_get, template_suggestion
from curate.services import review_decide
from pool.models import Caption
from tests.curate.conftest import make_caption, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def caption():
    image = make_image(1)
    make_caption(image, "tabby cat sleeping next to a laptop keyboard")
    return make_caption(image, "a cat")


def test_a_rewrite_is_a_new_caption_and_the_original_stays(caption, curator):
    review = review_decide(
        caption=caption,
        reviewer=curator,
        decision="rewrite",
        expected_version=0,
        rewrite_text="a tabby cat asleep",
    )
    rewritten = review.rewritten_caption
    assert (rewritten.text, rewritten.source, rewritten.parent, rewritten.image) == (
        "a tabby cat asleep",
        "rewrite",
        caption,
        caption.image,
    )
    caption.refresh_from_db()
    assert caption.text == "a cat" and caption.decision == "rewrite" and caption.status == "ok"


def test_a_rewrite_appears_in_a_later_annotation_task(caption, curator):
    campaign = Campaign.objects.create(name="rewrites", captions_per_task=3)
    review = review_decide(
        caption=caption,
        reviewer=curator,
        decision="rewrite",
        expected_version=0,
        rewrite_text="a tabby cat asleep",
        campaign=campaign,
    )
    links = TaskCaption.objects.filter(task__campaign=campaign)
    task_captions = set(links.values_list("caption_id", flat=True))
    assert {caption.id, review.rewritten_caption.id} <= task_captions
    assert links.values("task").distinct().count() == 1


@pytest.mark.parametrize("text", ["", "   ", "a cat", "  A  CAT "])
def test_empty_or_identical_rewrites_are_refused(caption, curator, text):
    with pytest.raises(RewriteRefused):
        review_decide(
            caption=caption, reviewer=curator, decision="rewrite", expected_version=0, rewrite_text=text
        )
    caption.refresh_from_db()
    assert caption.decision == "" and caption.decision_version == 0
    assert Review.objects.count() == 0 and Caption.objects.filter(source="rewrite").count() == 0


def test_without_the_encoder_the_template_uses_keywords_of_the_other_captions(caption, settings):
    settings.LOUPE_DEFAULT_ENCODER = "test:no-such-encoder"
    text, origin = template_suggestion(caption=caption)
    assert text.startswith("a picture of a cat, with ")
    assert "tabby" in text and "keywords" in origin


def test_a_suggestion_is_stored_for_the_web_process_to_read(caption, settings):
    settings.LOUPE_DEFAULT_ENCODER = "test:no-such-encoder"
    assert rewrite_suggestion_get(caption_id=caption.id) is None
    result = rewrite_suggest(caption=caption)
    assert rewrite_suggestion_get(caption_id=caption.id)["text"] == result["text"] != caption.text
    assert result["generator"] == "template"


@pytest.mark.system
def test_the_template_uses_the_encoders_content_labels_when_it_can_run(caption, settings):
    settings.LOUPE_DEFAULT_ENCODER = "offline:effnet-minilm"
    text, origin = template_suggestion(caption=caption)
    assert origin == "encoder content labels"
    assert text.startswith("a picture of a cat, with ") and len(text) > len("a picture of a cat, with ")
