"""Forms of the training pages."""

from __future__ import annotations

from django import forms
from django.conf import settings

from annotate.models import Campaign


class TrainingStartForm(forms.Form):
    campaign = forms.ModelChoiceField(queryset=Campaign.objects.order_by("name"), empty_label=None)
    encoder = forms.CharField(max_length=255, required=False, help_text="Empty: the default encoder.")
    epochs = forms.IntegerField(min_value=1, max_value=500, initial=40)
    seed = forms.IntegerField(min_value=0, initial=0)
    promote_if_better = forms.BooleanField(required=False, initial=False, label="Promote if the gate passes")

    def clean_encoder(self) -> str:
        return self.cleaned_data["encoder"].strip() or settings.LOUPE_DEFAULT_ENCODER


class RollbackForm(forms.Form):
    to_version = forms.IntegerField(min_value=1, required=False)
    encoder = forms.CharField(max_length=255, required=False)
