"""Forms for starting imports and cleaning runs from the pool pages (admins only)."""

from __future__ import annotations

from pathlib import PurePosixPath

from django import forms
from django.conf import settings

from pool import storage
from pool.readers import CAPTION_SOURCES, FORMATS, ImportSourceError, caption_columns_parse, source_resolve


class ImportForm(forms.Form):
    source = forms.CharField(
        max_length=1024,
        help_text="Absolute path on the server or an s3:// prefix: shards (a folder, a pattern), a folder of "
        "images, or a .csv/.jsonl/.parquet table. It must lie below an import root.",
    )
    format = forms.ChoiceField(choices=[("", "detect")] + [(f, f) for f in FORMATS], required=False)
    image_column = forms.CharField(max_length=200, required=False, help_text="Default: detected.")
    caption_columns = forms.CharField(
        max_length=1000, required=False, help_text="e.g. title:alt,description:human (default: detected)."
    )
    caption_source = forms.ChoiceField(choices=[(s, s) for s in CAPTION_SOURCES], initial="alt")

    def clean_source(self) -> str:
        # Without configured roots the page would read any file the server can (the API refuses the
        # same way): imports from the web need LOUPE_IMPORT_ROOTS.
        if not settings.LOUPE_IMPORT_ROOTS:
            raise forms.ValidationError(
                "Imports from this page are disabled: the server sets no LOUPE_IMPORT_ROOTS to read from. "
                "Ask an operator to set it (or use manage.py import_pool)."
            )
        source = self.cleaned_data["source"].strip()
        remote = storage.scheme(source) != "file"
        parts = PurePosixPath(source.split("://", 1)[-1]).parts
        if ".." in parts:
            raise forms.ValidationError("Paths containing '..' are refused.")
        if not remote and not storage.local_path(source).startswith("/"):
            raise forms.ValidationError("Give an absolute path on the server.")
        return source

    def clean(self):
        data = super().clean()
        source = data.get("source")
        if not source:
            return data
        try:
            caption_columns_parse(data.get("caption_columns") or None)
        except ImportSourceError as exc:
            self.add_error("caption_columns", str(exc))
            return data
        try:
            # Refuses paths outside LOUPE_IMPORT_ROOTS (when set) and paths that do not exist.
            source_resolve(source, format=data.get("format") or None)
        except ImportSourceError as exc:
            self.add_error("source", str(exc))
        return data


class CleaningForm(forms.Form):
    min_side = forms.IntegerField(
        min_value=1,
        max_value=100_000,
        initial=settings.LOUPE_MIN_IMAGE_SIDE,
        help_text="Shorter side in pixels.",
    )
    radius = forms.IntegerField(
        min_value=0, max_value=16, initial=6, help_text="Hamming radius of the 64-bit perceptual hash."
    )
