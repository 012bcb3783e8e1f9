"""Forms of the scoring screens."""

from __future__ import annotations

from django import forms

from scoring.active_model import loop_encoder_get
from scoring.encoder_names import EncoderError, encoder_name_check


class ScoringRunForm(forms.Form):
    encoder = forms.CharField(
        max_length=255,
        required=False,
        help_text="open_clip:<arch>:<tag or weights file>, hf:<local dir> or offline:effnet-minilm.",
    )
    reward_model_version = forms.IntegerField(
        min_value=0, required=False, help_text="Empty: the active reward model. 0: CLIPScore only."
    )
    chunk_size = forms.IntegerField(min_value=16, max_value=65536, initial=2048)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["encoder"].widget.attrs["placeholder"] = loop_encoder_get()

    def clean_encoder(self) -> str:
        name = self.cleaned_data["encoder"].strip() or loop_encoder_get()
        try:
            encoder_name_check(name)
        except EncoderError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return name
