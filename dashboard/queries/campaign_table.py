"""The Campaigns table, defined once: the Campaigns page, its downloads and the report's
Campaigns sheet all show this frame, same rows, same columns, same order.

Contract: :func:`campaign_table` is :func:`dashboard.queries.campaigns` with the per-receipt
figures, then the funnel columns (:func:`dashboard.queries.funnel.campaigns_with_funnel`), then
the cost columns (:func:`dashboard.queries.cost.campaigns_with_cost`): one row per campaign and
currency, so a campaign billed in two currencies has two rows (its receipt and funnel figures
repeated on each; two currencies are never added)."""

from __future__ import annotations

import pandas as pd

from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters
from dashboard.queries.cost import campaigns_with_cost, cost_by
from dashboard.queries.funnel import campaigns_with_funnel


def campaign_table(store: Store, f: Filters) -> pd.DataFrame:
    with store.pinned():
        table = campaigns_with_funnel(store, f, receipt_figures=True)
        return campaigns_with_cost(table, cost_by(store, f, "campaign"))
