"""Small HTML building blocks for self-contained reports (no scripts, fonts or CSS from a network).

Everything returns strings of HTML. Text and table cells are escaped; figures are embedded as
base64 ``data:image/png`` URIs so a report is one file that opens anywhere, offline.
"""
from __future__ import annotations

import base64
import html as _html
import math
from typing import Any, Iterable, Mapping

import pandas as pd

__all__ = [
    "CSS",
    "flatten",
    "guarded_section",
    "esc",
    "page",
    "section",
    "figure",
    "unavailable",
    "table",
    "kv_table",
    "bullet_list",
    "badge",
    "fmt_value",
]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9;line-height:1.45;font-size:14px}
header{background:#25344a;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px;font-weight:600}
header .sub{opacity:.8;font-size:13px}
nav{background:#e6e9ee;padding:6px 24px;font-size:13px}
nav a{margin-right:12px;color:#25344a}
main{padding:8px 24px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:14px 0;padding:10px 16px}
section h2{font-size:17px;margin:4px 0 8px;color:#25344a}
section h3{font-size:15px;margin:10px 0 6px}
figure{margin:6px 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #d5d9e0;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.bad,span.bad{background:#f9d7d7;color:#8a1010}
td.warn,span.warn{background:#fbeecb;color:#6b4a00}
td.ok,span.ok{background:#dcf1df;color:#145a1e}
span.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;margin:1px 2px}
.na{color:#777;font-style:italic}
.scroll{overflow-x:auto}
p.small{font-size:12px;color:#555}
ol.refs li{font-size:12.5px;margin-bottom:3px}
"""


def esc(text: Any) -> str:
    """HTML-escape ``str(text)`` (quotes included)."""
    return _html.escape("" if text is None else str(text), quote=True)


def page(title: str, body: str, subtitle: str = "", nav: Iterable[tuple[str, str]] = ()) -> str:
    """A complete HTML5 document with inline CSS and no external resources.

    Parameters
    ----------
    title, subtitle : str
        Shown in the header (escaped).
    body : str
        HTML of the main content (not escaped).
    nav : iterable of (anchor id, label)
        Links to sections of the page.
    """
    links = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in nav)
    nav_html = f"<nav>{links}</nav>" if links else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # an empty data: icon stops the browser from requesting /favicon.ico (a 404 in the console)
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><div class=\"sub\">{esc(subtitle)}</div></header>"
        f"{nav_html}<main>{body}</main></body></html>\n"
    )


def section(anchor: str, title: str, content: str) -> str:
    """A titled ``<section id=anchor>`` block (content is HTML, not escaped)."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{content}</section>'


def figure(png: bytes, alt: str, caption: str = "") -> str:
    """Embed PNG bytes as a base64 data URI, with alt text and an optional caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def unavailable(what: str, reason: str = "") -> str:
    """A visible 'not available' note for a section whose inputs are missing or failed."""
    why = f": {esc(reason)}" if reason else ""
    return f'<p class="na">{esc(what)} not available{why}.</p>'


def fmt_value(value: Any, digits: int = 4) -> str:
    """Format a cell value: floats with ``digits`` significant digits, NaN/None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(df: pd.DataFrame, classes: pd.DataFrame | None = None, html_cols: Iterable[str] = (),
          max_rows: int | None = None, digits: int = 4) -> str:
    """Render a DataFrame as an escaped HTML table.

    Parameters
    ----------
    df : DataFrame
        Rows to show (the index is not shown).
    classes : DataFrame, optional
        Same shape/labels as ``df``; a CSS class per cell ('bad', 'warn', 'ok' or '').
    html_cols : iterable of str
        Columns whose values are trusted HTML (e.g. links built by the caller) and not escaped.
    max_rows : int, optional
        Show at most this many rows, with a note of how many were left out.
    """
    html_cols = set(html_cols)
    shown = df if max_rows is None else df.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    rows = []
    for i, (idx, row) in enumerate(shown.iterrows()):
        cells = []
        for col in shown.columns:
            val = row[col]
            if hasattr(val, "item") and not isinstance(val, str):
                try:
                    val = val.item()
                except (ValueError, AttributeError):
                    pass
            cls = []
            if _is_num(val):
                cls.append("num")
            if classes is not None and col in classes.columns and idx in classes.index:
                c = classes.at[idx, col]
                if isinstance(c, str) and c:
                    cls.append(c)
            attr = f' class="{" ".join(cls)}"' if cls else ""
            text = str(val) if col in html_cols else esc(fmt_value(val, digits))
            cells.append(f"<td{attr}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if max_rows is not None and len(df) > max_rows:
        more = f'<p class="small">{len(df) - max_rows} more rows not shown.</p>'
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{more}'


def kv_table(items: dict[str, Any] | Iterable[tuple[str, Any]], digits: int = 4) -> str:
    """Two-column (name, value) table; values are escaped."""
    pairs = items.items() if isinstance(items, dict) else items
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(fmt_value(v, digits))}</td></tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def bullet_list(items: Iterable[Any], cls: str = "") -> str:
    """An escaped ``<ul>``; empty string when there are no items."""
    lis = "".join(f"<li>{esc(i)}</li>" for i in items)
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<ul{attr}>{lis}</ul>" if lis else ""


def badge(text: str, kind: str = "warn") -> str:
    """A small coloured label; ``kind`` is 'bad', 'warn' or 'ok'."""
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with dotted keys (lists shown as comma-separated text)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ", ".join(str(x) for x in v)
        else:
            out[key] = v
    return out


def guarded_section(anchor: str, title: str, build, warnings: list[str]) -> str:
    """A report section whose body comes from ``build()``; if building fails, the section says
    "not available" with the error (traceback folded) and the error is added to ``warnings``, so
    one broken figure never takes the page down."""
    import traceback

    try:
        content = build()
    except Exception as exc:  # noqa: BLE001 - any failure becomes a visible, explained gap
        msg = f"{type(exc).__name__}: {exc}"
        warnings.append(f"{title}: {msg}")
        content = unavailable(title, msg) + (
            f"<details><summary>details</summary><pre>{esc(traceback.format_exc(limit=3))}</pre></details>")
    return section(anchor, title, content)
