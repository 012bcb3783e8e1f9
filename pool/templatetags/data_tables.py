"""``{% data_table value %}``: a run's parameters, summary or a model's configuration as a readable table
instead of a Python dict. Nested dicts become nested tables, lists of numbers or words one line, lists of
dicts a table with a column per key. Everything is escaped (format_html)."""

from __future__ import annotations

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# Keys whose values are caption or run ids and similar: shown as they are, not as numbers to round.
MAX_LIST_ITEMS = 12


def _label(key) -> str:
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else "—"


def _scalar(value) -> SafeString:
    if value is None:
        return mark_safe('<span class="muted">—</span>')  # noqa: S308 - constant markup
    if isinstance(value, bool):
        return format_html("{}", "yes" if value else "no")
    if isinstance(value, float):
        return format_html('<span class="num">{}</span>', f"{value:.4g}")
    if isinstance(value, int):
        return format_html('<span class="num">{}</span>', f"{value:,}")
    text = str(value)
    if not text:
        return mark_safe('<span class="muted">(empty)</span>')  # noqa: S308 - constant markup
    return format_html("{}", text)


def _render(value, depth: int = 0) -> SafeString:
    if isinstance(value, dict):
        if not value:
            return mark_safe('<span class="muted">(none)</span>')  # noqa: S308 - constant markup
        if depth > 3:
            return format_html("<code>{}</code>", str(value))
        rows = format_html_join(
            "",
            '<tr><th scope="row">{}</th><td>{}</td></tr>',
            ((_label(k), _render(v, depth + 1)) for k, v in value.items()),
        )
        return format_html(
            '<table class="data-table{}"><tbody>{}</tbody></table>', " nested" if depth else "", rows
        )
    if isinstance(value, list | tuple):
        if not value:
            return mark_safe('<span class="muted">(none)</span>')  # noqa: S308 - constant markup
        if all(isinstance(item, dict) for item in value):
            keys: list = []
            for item in value[:MAX_LIST_ITEMS]:
                keys += [k for k in item if k not in keys]
            head = format_html_join("", "<th>{}</th>", ((_label(k),) for k in keys))
            body = format_html_join(
                "",
                "<tr>{}</tr>",
                (
                    (format_html_join("", "<td>{}</td>", ((_render(item.get(k), depth + 1),) for k in keys)),)
                    for item in value[:MAX_LIST_ITEMS]
                ),
            )
            more = (
                format_html('<p class="muted small">and {} more</p>', len(value) - MAX_LIST_ITEMS)
                if len(value) > MAX_LIST_ITEMS
                else ""
            )
            return format_html(
                '<table class="data-table list"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>{}',
                head,
                body,
                more,
            )
        shown = [
            _scalar(v) if not isinstance(v, dict | list | tuple) else _render(v, depth + 1)
            for v in value[:MAX_LIST_ITEMS]
        ]
        text = mark_safe(", ".join(shown))  # noqa: S308 - every part was escaped by format_html
        if len(value) > MAX_LIST_ITEMS:
            return format_html('{} <span class="muted">… ({} in all)</span>', text, len(value))
        return text
    return _scalar(value)


@register.simple_tag
def data_table(value) -> SafeString:
    return _render(value)
