"""Human-readable output: tables that line up with Chinese text, China times, rates as percentages."""
import json
import unicodedata
from datetime import datetime, timedelta, timezone

import click

CHINA_TIME = timezone(timedelta(hours=8), "CST")
MAX_CELL = 36


def display_width(text):
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cut(text, width):
    if display_width(text) <= width:
        return text
    out = ""
    for char in text:
        if display_width(out + char) > width - 1:
            return out + "…"
        out += char
    return out


def cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    return _cut(str(value).replace("\n", " "), MAX_CELL)


def table(rows, columns):
    """``columns``: [(key or function, header)]. Prints a header, a rule and one line per row."""
    rendered = [[cell(key(row) if callable(key) else row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([display_width(h)] + [display_width(r[i]) for r in rendered]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c + " " * (w - display_width(c)) for c, w in zip(cells, widths)).rstrip()
    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for row in rendered:
        click.echo(line(row))
    if not rows:
        click.echo("（无）")


def fields(pairs):
    """Label: value lines, labels aligned."""
    width = max(display_width(label) for label, _ in pairs)
    for label, value in pairs:
        click.echo(f"{label}{' ' * (width - display_width(label))}  {cell(value)}")


def china_time(value):
    """An ISO 8601 time (UTC or with any offset) as China time, to the minute."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M")


def percent(value):
    return None if value is None else f"{value * 100:.1f}%"


def as_json(data):
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True))
