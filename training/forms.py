"""Forms of the training pages."""

from __future__ import annotations

from django import forms

from annotate.models import Campaign
from scoring.active_model import loop_encoder_get


class TrainingStartForm(forms.Form):
    campaign = forms.ModelChoiceField(queryset=Campaign.objects.order_by("name"), empty_label=None)
    encoder = forms.CharField(max_length=255, required=False, help_text="Empty: the default encoder.")
    epochs = forms.IntegerField(min_value=1, max_value=500, initial=40)
    seed = forms.IntegerField(min_value=0, initial=0)
    promote_if_better = forms.BooleanField(required=False, initial=False, label="Promote if the gate passes")

    def clean_encoder(self) -> str:
        return self.cleaned_data["encoder"].strip() or loop_encoder_get()


class RollbackForm(forms.Form):
    to_version = forms.IntegerField(min_value=1, required=False)
    encoder = forms.CharField(max_length=255, required=False)
