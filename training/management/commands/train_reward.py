"""``manage.py train_reward --campaign NAME``: train a reward model candidate now, in this process."""

from __future__ import annotations

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.models import Campaign
from scoring.active_model import loop_encoder_get
from training.candidates import reward_model_finetune, reward_model_gate, reward_model_train
from training.config import TrainConfig
from training.finetune_config import FinetuneConfig, FinetuneError, finetune_params_check
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
        parser.add_argument(
            "--finetune",
            choices=["last_blocks", "lora"],
            default=None,
            help="Fine-tune the encoder instead of training frozen heads (docs/finetune.md); the result "
            "is a new encoder, and promoting it rescores the pool.",
        )
        parser.add_argument(
            "--blocks", type=int, default=None, help="Fine-tuning: last blocks to train (LoRA: 0 = all)."
        )
        parser.add_argument(
            "--towers", default=None, help="Fine-tuning: image,text (default both), image or text."
        )

    def handle(
        self,
        *args,
        campaign: str,
        encoder,
        epochs,
        seed,
        promote_if_better,
        finetune=None,
        blocks=None,
        towers=None,
        **options,
    ):
        found = Campaign.objects.filter(name=campaign).first()
        if found is None:
            names = ", ".join(Campaign.objects.order_by("name").values_list("name", flat=True)[:20]) or "none"
            raise CommandError(f"No campaign named {campaign!r}. Campaigns: {names}.")
        ft = None
        if finetune is not None:
            ft = {"mode": finetune}
            for key, value in (("blocks", blocks), ("epochs", epochs), ("seed", seed)):
                if value is not None:
                    ft[key] = value
            if towers:
                ft["towers"] = [t.strip() for t in towers.split(",") if t.strip()]
            try:
                ft = finetune_params_check(ft, base_encoder=encoder or loop_encoder_get())
            except FinetuneError as exc:
                raise CommandError(str(exc)) from exc
        elif blocks is not None or towers:
            raise CommandError("--blocks and --towers only apply with --finetune last_blocks|lora.")
        config = TrainConfig()
        if epochs is not None:
            config.epochs = epochs
        if seed is not None:
            config.seed = seed
        total = ft.get("epochs", FinetuneConfig.epochs) if ft else config.epochs
        # A bar only on a terminal: in a log its carriage returns would become one line per refresh.
        bar = tqdm(
            total=total,
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
            if ft is not None:
                model = reward_model_finetune(
                    campaign=found,
                    base_encoder=encoder or loop_encoder_get(),
                    finetune_config=ft,
                    progress=progress,
                )
            else:
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
        if m.get("finetune"):
            f = m["finetune"]
            out.write(
                f"  fine-tuned     {f['base_encoder']} ({f['mode']}, blocks {f['blocks']}): "
                f"{f['trainable_parameters']:,} encoder parameters, {f['seconds_per_epoch']} s/epoch, "
                f"peak {f['peak_memory_mb']} MB"
            )
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
