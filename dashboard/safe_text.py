"""Stored strings shown as text and written as data, never interpreted.

Every string a receipt carries (campaign name and URL labels, clientReference, status:
unknown statuses are stored as sent, batch and message ids) comes from whoever can post to
the webhook, so each one is hostile. Three places where the dashboard puts such strings
interpret text, and each has one function here; no other code hands them a stored string.

* **Streamlit Markdown** (``st.markdown``/``caption``/``subheader``/``info``/..., and widget
  labels, help and metric labels, which are Markdown too): :func:`md_text`. It
  backslash-escapes every ASCII punctuation character (CommonMark lets any of them be
  escaped, and an escaped one is always a literal character), turns line breaks into
  spaces and drops spaces and tabs at the ends (an indented line would be a code block).
  That leaves no link ``[t](u)``, no image ``![i](u)`` (which every viewer's browser would
  fetch), no ``<http://..>`` autolink, no raw HTML (Streamlit shows it escaped anyway,
  ``\\<`` makes sure), no emphasis, heading, list or table, and none of Streamlit's
  directives (``:red[..]``, ``:material/..:``) or ``$`` math. Streamlit also turns bare
  URLs, e-mail addresses and ``:emoji:`` codes in the resulting *text* into links and
  pictures, which no escape prevents: an invisible word joiner (U+2060) after every ``:``
  and ``@`` and inside ``www.`` breaks them. The text reads as stored; copied from the
  page, those places carry the joiner.
* **Plotly** (titles, axis ticks and category labels, legend names, hover text,
  annotations): :func:`plotly_text`. Plotly renders a subset of HTML in all of them
  (``<a href>``, ``<b>``, ``<br>``, ``<i>``, ``<span style>``, ``<sub>``, ``<sup>``) and
  shows ``&lt;`` as ``<``, so ``&``, ``<`` and ``>`` are escaped; quotes need not be (no tag
  can open). Data must also never be pasted into a ``hovertemplate``'s own text (Plotly
  would substitute a ``%{..}`` in it): templates refer to ``%{x}``, ``%{y}``,
  ``%{fullData.name}``, whose values are escaped.
* **Spreadsheets** (every CSV the product writes): :func:`csv_cell`, the OWASP rule against
  CSV (formula) injection. A text cell starting with ``=``, ``+``, ``-``, ``@``, tab or
  carriage return gets a leading single quote, so Excel or LibreOffice shows
  ``'=HYPERLINK(..)`` as text instead of evaluating it. Only text cells: numbers,
  negative ones included, stay numbers. :func:`csv_safe_frame` applies it to a DataFrame
  (pandas writes the CSV); :func:`csv_safe_select` is the same rule in SQL for files DuckDB
  writes itself (``COPY``), built from the same characters. Excel files need none of this:
  the report writer stores text with xlsxwriter's ``write_string``, never as a formula.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

import pandas as pd

# ---------------------------------------------------------------------------------------------
# Streamlit Markdown
# ---------------------------------------------------------------------------------------------

_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
# Streamlit's Markdown finds bare URLs, e-mail addresses (GFM autolink literals) and emoji
# shortcodes in the *text* after escapes are resolved, so escaping cannot stop them; an
# invisible word joiner after every ":" and "@" and inside "www." does ("http:\u2060//").
_AUTOLINK_TRIGGERS = re.compile(r"(:|@|(?i:www)(?=\.))")
WORD_JOINER = "\u2060"
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def md_text(value) -> str:
    """``value`` as Streamlit Markdown that renders as exactly its text (on one line).

    For any element or widget argument that takes Markdown: body, label, help, caption.
    None gives "".
    """
    text = "" if value is None else str(value)
    # Spaces and tabs at the ends would show nothing (Markdown drops them), except that four
    # of them at a line's start open a code block, where the escapes would show.
    text = _AUTOLINK_TRIGGERS.sub(r"\1" + WORD_JOINER, _LINE_BREAKS.sub(" ", text).strip(" \t"))
    return _MD_PUNCTUATION.sub(r"\\\1", text)


# ---------------------------------------------------------------------------------------------
# Plotly
# ---------------------------------------------------------------------------------------------


def plotly_text(value) -> str:
    """``value`` as Plotly label text (tick, legend, hover, title, annotation) that shows as
    exactly its text: ``&``, ``<``, ``>`` HTML-escaped. None gives ""."""
    return html.escape("" if value is None else str(value), quote=False)


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------

# A cell starting with one of these is a formula (or becomes one: "-1+cmd") to a spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA_GUARD = "'"


def csv_cell(value):
    """A CSV cell that a spreadsheet will not evaluate: text starting with one of
    :data:`FORMULA_PREFIXES` gets :data:`FORMULA_GUARD` in front; anything else (other text,
    numbers, dates, missing values) is returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return FORMULA_GUARD + value
    return value


def is_text_column(values: pd.Series) -> bool:
    """True for a column that may hold text: object, string or category type (numeric,
    boolean and time columns cannot)."""
    return (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)
            or isinstance(values.dtype, pd.CategoricalDtype))


def csv_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with :func:`csv_cell` applied to every cell of its text columns
    (:func:`is_text_column`; non-text values in them are left alone), ready for ``to_csv``.
    Returns a copy only when something changed."""
    changed = {}
    for column in frame.columns:
        values = frame[column]
        if not is_text_column(values):
            continue
        guarded = values.map(csv_cell)
        if not guarded.equals(values):
            changed[column] = guarded
    return frame.assign(**changed) if changed else frame


def csv_cell_sql(column: str) -> str:
    """:func:`csv_cell` as a DuckDB expression over the text column ``column``."""
    name = '"' + column.replace('"', '""') + '"'
    firsts = ", ".join(f"chr({ord(c)})" for c in FORMULA_PREFIXES)
    guard = FORMULA_GUARD.replace("'", "''")
    return f"CASE WHEN left({name}, 1) IN ({firsts}) THEN '{guard}' || {name} ELSE {name} END"


def csv_safe_select(sql: str, text_columns: Iterable[str]) -> str:
    """A query returning the rows of ``sql`` (same columns, same order of rows) with
    :func:`csv_cell_sql` applied to ``text_columns``: wrap a query before DuckDB ``COPY``s it
    to CSV. Numbers and times are not touched."""
    columns = list(text_columns)
    if not columns:
        return sql
    replaced = ", ".join(f'{csv_cell_sql(c)} AS "{c.replace(chr(34), chr(34) * 2)}"' for c in columns)
    return f"SELECT * REPLACE ({replaced}) FROM ({sql})"
