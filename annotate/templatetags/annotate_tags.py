"""Template helpers of the annotation screens."""

from __future__ import annotations

import math
from xml.etree import ElementTree

import markdown as markdown_lib
from django import template
from django.utils.safestring import mark_safe

register = template.Library()

SAFE_URL_PREFIXES = ("http://", "https://", "mailto:", "/", "#")


class _UnsafeLinkStripper(markdown_lib.treeprocessors.Treeprocessor):
    """Drop link targets such as ``javascript:`` that escaping alone does not neutralise."""

    def run(self, root: ElementTree.Element) -> None:
        for element in root.iter():
            for attribute in ("href", "src"):
                value = element.get(attribute)
                if value is not None and not value.strip().lower().startswith(SAFE_URL_PREFIXES):
                    del element.attrib[attribute]


class _EscapeHtml(markdown_lib.extensions.Extension):
    def extendMarkdown(self, md):  # noqa: N802 - the Markdown API's name
        # Without these two, raw HTML in the source is treated as text and escaped on output.
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(_UnsafeLinkStripper(md), "unsafe_links", 0)


@register.filter
def markdown_safe(text: str) -> str:
    """Markdown for instructions written by admins; raw HTML is shown as text, never run."""
    html = markdown_lib.markdown(text or "", extensions=[_EscapeHtml(), "sane_lists"])
    return mark_safe(html)


@register.filter
def number(value, digits: int = 2) -> str:
    """A statistic for display: NaN and None read as an em dash, not "nan"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{int(digits)}f}"


@register.filter
def percent(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.0f}%"


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if mapping else None
