"""The option questions: which campaigns and URL labels a filter can take.

Contract: lists meant for widgets are bounded whatever the data holds: :func:`campaign_choices`
and :func:`label_choices` rank, search and ``LIMIT`` in DuckDB (at most :data:`OPTION_LIMIT`
values reach Python); :func:`campaign_names` and :func:`label_pairs` list everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters
from dashboard import _sql
from dashboard.queries._common import OPTION_LIMIT


def campaign_names(store: Store) -> list[str]:
    """Every campaign in the data, sorted. Unbounded (one name per campaign): a widget offers
    :func:`campaign_choices` instead."""
    def compute():
        sql, params = _campaign_totals(store)
        return store.query(f"SELECT value FROM ({sql}) ORDER BY value", params)["value"].tolist()
    return store.cached("campaign_names", (), compute)


@dataclass(frozen=True)
class Choices:
    """Some of the values a filter can take: ``values``, most messages first (then by
    name), at most the limit asked for; ``total``, how many values match in all."""

    values: tuple[str, ...]
    total: int


def campaign_choices(store: Store, search: str = "", limit: int = OPTION_LIMIT,
                     among: tuple[str, ...] | None = None) -> Choices:
    """The campaigns a filter widget offers: with the most messages (all time) first, only
    those whose name contains ``search`` (trimmed; any case, ``%``/``_`` literal), or only
    those of ``among`` (a link's values: which exist?). At most ``limit``: the ranking and
    the limit are applied in DuckDB, so only ``limit`` names ever reach Python."""
    return _choices(store, "campaign_choices", _campaign_totals, search, limit, among)


def label_choices(store: Store, search: str = "", limit: int = OPTION_LIMIT,
                  among: tuple[str, ...] | None = None) -> Choices:
    """:func:`campaign_choices` for the URL label pairs, as ``key=value`` texts (``search``
    matches that text; ``among`` lists such texts)."""
    return _choices(store, "label_choices", _label_totals, search, limit, among)


def _choices(store: Store, name: str, totals, search: str, limit: int, among: tuple[str, ...] | None) -> Choices:
    """:func:`campaign_choices` over ``totals(store)``: SQL with columns value and messages,
    and its parameters."""
    search = (search or "").strip()
    among = None if among is None else tuple(dict.fromkeys(str(v) for v in among))
    if among == ():
        return Choices((), 0)

    def compute():
        sql, params = totals(store)
        conditions = ["TRUE"]
        if search:
            params["choice_pattern"] = _sql.contains_pattern(search)
            conditions.append(_sql.contains_condition("value", "choice_pattern"))
        if among is not None:
            params["choice_among"] = list(among)
            conditions.append("list_contains($choice_among, value)")
        params["choice_limit"] = int(limit)
        # count(*) OVER (): how many match, computed in DuckDB before the LIMIT.
        df = store.query(f"SELECT value, count(*) OVER () AS total FROM ({sql}) WHERE {' AND '.join(conditions)} "
                         f"ORDER BY messages DESC, value LIMIT $choice_limit", params)
        return Choices(tuple(df["value"]), int(df["total"].iloc[0]) if len(df) else 0)
    return store.cached(name, (search, int(limit), among), compute)


def _campaign_totals(store: Store) -> tuple[str, dict]:
    """value (campaign), messages: every campaign with messages (all time)."""
    sql, params = store.filtered_counts_sql(Filters())
    return (f"SELECT campaign AS value, sum(messages)::BIGINT AS messages FROM ({sql}) "
            f"GROUP BY campaign HAVING sum(messages) > 0"), params


def label_pairs(store: Store) -> pd.DataFrame:
    """key, value, messages: every webhook URL label seen (except ``campaign``), by key, most
    used first. Unbounded (a row per pair): a widget offers :func:`label_choices` instead."""
    def compute():
        sets, params = store.label_sets_sql()
        return store.query(f"SELECT * FROM ({_label_pairs_sql(sets)}) ORDER BY key, messages DESC, value", params)
    return store.cached("label_pairs", (), compute)


def _label_totals(store: Store) -> tuple[str, dict]:
    """value (``key=value``), messages: every URL label pair (see :func:`label_pairs`), in
    SQL (the label sets are never fetched)."""
    sets, params = store.label_sets_sql()
    return f"SELECT key || '=' || value AS value, messages FROM ({_label_pairs_sql(sets)})", params


def _label_pairs_sql(sets: str) -> str:
    """key, value, messages of every URL label pair (but ``campaign``) over the label sets
    ``sets`` (a query like :meth:`~dlrlens.store.reader.Store.label_sets_sql`); a message counts once per pair."""
    return f"""
        WITH pairs AS (
            SELECT DISTINCT s.label_sets, s.messages, j.key AS key, j.value ->> '$' AS value
            FROM ({sets}) s, unnest(from_json(s.label_sets::VARCHAR, '["VARCHAR"]')) t(l), json_each(t.l) j
            WHERE j.key <> 'campaign')
        SELECT key, value, sum(messages)::BIGINT AS messages FROM pairs GROUP BY ALL"""
