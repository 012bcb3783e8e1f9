"""Forms of the judge page: a judge run over a band, and a rewrite run below a bar."""

from __future__ import annotations

from django import forms
from django.conf import settings

from annotate.models import Campaign
from scoring.active_model import loop_encoder_get
from scoring.encoder_names import EncoderError, vlm_name_check


def _clean_judge(value: str) -> str:
    name = (value or "").strip() or (settings.LOUPE_VLM_JUDGE or "")
    if not name:
        raise forms.ValidationError("Name the judge: vlm:<local checkpoint dir> (or set LOUPE_VLM_JUDGE).")
    try:
        vlm_name_check(name)
    except EncoderError as exc:
        raise forms.ValidationError(str(exc)) from exc
    return name


class JudgeRunForm(forms.Form):
    scorer = forms.CharField(max_length=255, required=False, label="Judge", help_text="vlm:<local dir>")
    encoder = forms.CharField(max_length=255, required=False, help_text="The scoring whose band is judged.")
    field = forms.ChoiceField(choices=[("reward", "reward"), ("clipscore", "CLIPScore")], initial="reward")
    low_percent = forms.FloatField(min_value=0, max_value=100, initial=40)
    high_percent = forms.FloatField(min_value=0, max_value=100, initial=60)

    def clean_scorer(self) -> str:
        return _clean_judge(self.cleaned_data["scorer"])

    def clean_encoder(self) -> str:
        return self.cleaned_data["encoder"].strip() or loop_encoder_get()

    def clean(self):
        data = super().clean()
        low, high = data.get("low_percent"), data.get("high_percent")
        if low is not None and high is not None and low >= high:
            raise forms.ValidationError("The band's low percentile must be below its high percentile.")
        return data


class RewriteRunForm(forms.Form):
    scorer = forms.CharField(max_length=255, required=False, label="Judge", help_text="vlm:<local dir>")
    itm_below = forms.FloatField(min_value=0, max_value=100, initial=50, label="Rewrite where ITM is below")
    limit = forms.IntegerField(min_value=1, max_value=100_000, initial=200)
    campaign = forms.ModelChoiceField(
        queryset=Campaign.objects.order_by("name"),
        required=False,
        empty_label="(do not send to annotators)",
        help_text="Send each original and its rewrite to this campaign, side by side.",
    )

    def clean_scorer(self) -> str:
        return _clean_judge(self.cleaned_data["scorer"])
