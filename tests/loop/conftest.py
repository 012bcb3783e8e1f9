from __future__ import annotations

import pytest

from tests.annotate.factories import campaign_with_tasks


@pytest.fixture
def campaign(db):
    """A small campaign: 6 images, 4 captions each, overlap 2, no gold."""
    return campaign_with_tasks(name="Loop campaign", images=6, captions_per_image=4, overlap=2)


def write_truth_table(directory) -> str:
    """A demo-style truth table over every image in the pool: on each image the newest caption is the
    "description" (best), then "title", "keywords", "negative" (pool/demo.py's roles and qualities)."""
    import json

    from pool.models import Image

    roles = ["description", "title", "keywords", "negative"]
    lines = []
    for image in Image.objects.all():
        name = f"truth-{image.pk}.jpg"
        (directory / name).write_bytes(image.path.read_bytes())
        for role, caption in zip(roles, image.captions.order_by("-pk"), strict=False):
            lines.append(json.dumps({"image": name, "text": caption.text, "role": role}))
    path = directory / "truth.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def simulate_judgments(campaign, directory, *, judgments: int = 80) -> None:
    """Two simulated annotators judge ``campaign`` through the real services (quietly, seeded)."""
    import io

    from django.core.management import call_command

    call_command(
        "simulate_annotators",
        campaign=campaign.name,
        annotators=2,
        judgments=judgments,
        noise=0.05,
        seed=0,
        truth=write_truth_table(directory),
        no_progress=True,
        stdout=io.StringIO(),
    )
