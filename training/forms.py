"""Forms of the training pages."""

from __future__ import annotations

from django import forms

from annotate.models import Campaign
from scoring.active_model import loop_encoder_get
from training.finetune_config import FinetuneError, finetune_params_check


class TrainingStartForm(forms.Form):
    campaign = forms.ModelChoiceField(queryset=Campaign.objects.order_by("name"), empty_label=None)
    encoder = forms.CharField(max_length=255, required=False, help_text="Empty: the default encoder.")
    epochs = forms.IntegerField(min_value=1, max_value=500, initial=40)
    seed = forms.IntegerField(min_value=0, initial=0)
    promote_if_better = forms.BooleanField(required=False, initial=False, label="Promote if the gate passes")
    # Fine-tuning trains part of the encoder too: a new encoder, and promoting it re-encodes the pool.
    finetune = forms.ChoiceField(
        required=False,
        label="Fine-tune the encoder",
        choices=[
            ("", "No: train heads on cached features"),
            ("last_blocks", "Last blocks"),
            ("lora", "LoRA"),
        ],
        help_text="Slower, makes a new encoder; the gate needs a clear win and promotion rescores the pool.",
    )
    blocks = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=48,
        initial=2,
        help_text="Fine-tuning: last blocks (LoRA: 0 = all).",
    )

    def finetune_params(self) -> dict | None:
        """The fine-tuning request of a valid form (checked), or None for frozen heads."""
        data = self.cleaned_data
        if not data.get("finetune"):
            return None
        params = {"mode": data["finetune"], "epochs": data["epochs"], "seed": data["seed"]}
        if data.get("blocks") is not None:
            params["blocks"] = data["blocks"]
        return params

    def clean(self):
        cleaned = super().clean()
        params = self.finetune_params() if not self.errors else None
        if params is not None:
            try:
                finetune_params_check(params, base_encoder=cleaned["encoder"])
            except FinetuneError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return cleaned

    def clean_encoder(self) -> str:
        return self.cleaned_data["encoder"].strip() or loop_encoder_get()


class RollbackForm(forms.Form):
    to_version = forms.IntegerField(min_value=1, required=False)
    encoder = forms.CharField(max_length=255, required=False)
