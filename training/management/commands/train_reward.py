"""``manage.py train_reward --campaign NAME``: train a reward model candidate now, in this process."""

from __future__ import annotations

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.models import Campaign
from training.candidates import reward_model_gate, reward_model_train
from training.config import TrainConfig
from training.services import reward_model_promote


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class Command(BaseCommand):
    help = (
        "Train a reward model on a campaign's judgments, evaluate it against CLIPScore and the active model."
    )

    def add_arguments(self, parser):
        parser.add_argument("--campaign", required=True, help="Campaign name.")
        parser.add_argument(
            "--encoder", default=None, help=f"Encoder name (default {settings.LOUPE_DEFAULT_ENCODER})."
        )
        parser.add_argument("--epochs", type=int, default=None)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument(
            "--promote-if-better", action="store_true", help="Run the gate and promote if it passes."
        )

    def handle(self, *args, campaign: str, encoder, epochs, seed, promote_if_better, **options):
        found = Campaign.objects.filter(name=campaign).first()
        if found is None:
            names = ", ".join(Campaign.objects.order_by("name").values_list("name", flat=True)[:20]) or "none"
            raise CommandError(f"No campaign named {campaign!r}. Campaigns: {names}.")
        config = TrainConfig()
        if epochs is not None:
            config.epochs = epochs
        if seed is not None:
            config.seed = seed
        # A bar only on a terminal: in a log its carriage returns would become one line per refresh.
        bar = tqdm(
            total=config.epochs,
            desc="epochs",
            unit="epoch",
            disable=options.get("verbosity", 1) < 1 or not sys.stderr.isatty(),
        )

        def progress(epoch: int, total: int, record: dict) -> None:
            bar.update(1)
            shown = {"loss": record.get("train_bt_loss")}
            if record.get("val_accuracy") is not None:
                shown["val_acc"] = record["val_accuracy"]
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})

        try:
            model = reward_model_train(campaign=found, encoder=encoder, config=config, progress=progress)
        except Exception as exc:
            raise CommandError(f"Training failed: {exc}") from exc
        finally:
            bar.close()
        m = model.metrics
        out = self.stdout
        out.write(f"Reward model v{model.version} ({model.encoder}) registered as {model.status}.")
        out.write(f"  checkpoint     {model.checkpoint}  sha256 {model.checkpoint_sha256[:16]}...")
        out.write(
            f"  data           {model.n_judgments} judgments, {model.n_pairs} pairs; split {m.get('split')}"
        )
        out.write(f"  held-out pairs {m.get('n_pairs')} ({m.get('n_tied_pairs')} tied)")
        out.write(f"  accuracy       {_fmt(m.get('accuracy'))}   (tie-aware {_fmt(m.get('tie_accuracy'))})")
        out.write(f"  CLIPScore      {_fmt(m.get('clipscore_accuracy'))}")
        out.write(f"  human ceiling  {_fmt(m.get('human_ceiling'))} ({m.get('human_ceiling_pairs')} pairs)")
        out.write(f"  ECE            {_fmt(m.get('ece'))}")
        for key, rho in (m.get("spearman") or {}).items():
            out.write(f"  Spearman {key:<14} {_fmt(rho)}")
        if m.get("active"):
            out.write(
                f"  active v{m['active'].get('version')} on the same pairs: {_fmt(m['active'].get('accuracy'))}"
            )
        if promote_if_better:
            if reward_model_gate(candidate=model):
                reward_model_promote(model=model, note="train_reward --promote-if-better")
                out.write(self.style.SUCCESS(f"Gate passed: v{model.version} is now active."))
            else:
                model.refresh_from_db()
                out.write(self.style.WARNING(f"Gate refused: {model.metrics['gate']['note']}"))
