"""What a rule's ``by`` may name: one :class:`Dimension` per row of :data:`DIMENSIONS`.

A dimension says how a counts row (:meth:`dlrlens.store.reader.Store.counts_sql`: columns
campaign, outcome, last_status, label_sets) maps to its group values (an SQL LIST: a message
counts in each), and which dashboard URL parameters (``dashboard/state.py``) filter a page to
one group. Adding a dimension (country, network, sender, route once the send records carry
them) is one more row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dlrlens.store.sql import json_pointer, label_values_sql


@dataclass(frozen=True)
class Dimension:
    name: str
    spelling: str  # how a rule writes it
    meaning: str
    takes_argument: bool
    # (argument) -> (SQL LIST expression of a counts row's group values or None for one group, its parameters)
    group_sql: Callable[[str | None], tuple[str | None, dict]]
    # (argument, group value) -> dashboard URL query parameters showing that group
    link_params: Callable[[str | None, str], dict[str, str]]


DIMENSIONS: dict[str, Dimension] = {d.name: d for d in (
    Dimension("all", "all", "one group: every message", False,
              lambda _: (None, {}), lambda _, __: {}),
    Dimension("campaign", "campaign", "one group per campaign", False,
              lambda _: ("[campaign]", {}), lambda _, grp: {"campaign": grp}),
    Dimension("label", "label:<key>", "one group per value of the URL label <key> (e.g. label:team)", True,
              lambda key: (label_values_sql("by_label_path"), {"by_label_path": json_pointer(key)}),
              lambda key, grp: {"label": f"{key}={grp}"}),
)}


def known() -> str:
    """The accepted spellings, for error messages."""
    return ", ".join(d.spelling for d in DIMENSIONS.values())


def parse_by(text: str) -> tuple[Dimension, str | None]:
    """``by`` text -> (dimension, argument); ValueError naming the known ones."""
    name, _, argument = str(text).partition(":")
    dimension = DIMENSIONS.get(name.strip())
    if dimension is None:
        raise ValueError(f"unknown grouping {text!r}; known: {known()}")
    argument = argument.strip()
    if dimension.takes_argument and not argument:
        raise ValueError(f"{dimension.spelling} needs a key after the colon (e.g. label:team)")
    if not dimension.takes_argument and argument:
        raise ValueError(f"{dimension.name} takes no argument; known: {known()}")
    return dimension, argument or None
