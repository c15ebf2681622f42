"""What tests read back from an Iceberg store, and the report they compare with the local one.

* :func:`table_column`: one column of every row of the receipts table, read through pyiceberg
  (the catalog configured by ``PYICEBERG_CATALOG__<NAME>__*`` variables in this process);
  :func:`derived_message_ids`: the message ids of the derived table.
* :func:`assert_same_figures`: named frames (a page's questions) equal, exactly.
* :func:`report_json`: ``dlrlens report --format json`` of a store (local or ``iceberg:NAME``),
  in this process, without the one entry that always differs (its generation time).
* :func:`assert_same_campaigns`: another engine's Campaigns table (``dashboard.engine_sql``)
  equals the report's Campaigns sheet, row by row and column by column.
* :func:`commit_keeping_a_copy`: a flushed (committed) segment's path and content, to put back
  as a crash between the commit and the segment's deletion leaves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dashboard.catalog import unit
from dlrlens import cli
from dlrlens.store.iceberg.derived import derived_table
from dlrlens.store.iceberg.table import open_catalog, receipts_table
from dlrlens.store.wal import list_segments


def table_column(column: str, catalog: str = "lake") -> list:
    """``column`` of every row of catalog ``catalog``'s receipts table (the table must exist)."""
    table = receipts_table(open_catalog(catalog), create=False)
    return table.scan(selected_fields=(column,)).to_arrow()[column].to_pylist()


def derived_message_ids(catalog: str = "lake") -> list[str]:
    """Every row's message id in the derived table (``receipts_messages``), read by pyiceberg
    (by name: its files carry no field ids) from every data file of its current snapshot."""
    table = derived_table(open_catalog(catalog))
    return table.scan(selected_fields=("delivery_message_id",)).to_arrow()["delivery_message_id"].to_pylist()


def table_ids(catalog: str = "lake") -> list[str]:
    """Every row's receipt id (every data file of the current snapshot is read: a missing one fails)."""
    return table_column("receipt_id", catalog)


def commit_keeping_a_copy(storage, rows: list[dict]) -> tuple[Path, bytes]:
    """Store ``rows`` in a segment of their own, flush it (a commit) and stop ``storage``; the
    segment's path and content."""
    storage.store(rows)
    storage.wal.rotate()
    segment = list_segments(storage.log_dir)[0]
    kept = segment.read_bytes()
    storage.flush()
    storage.close()
    return segment, kept


def assert_same_figures(expected: dict[str, pd.DataFrame], got: dict[str, pd.DataFrame]) -> None:
    """Every named frame of ``expected`` equals ``got``'s exactly (values; dtypes may differ)."""
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), got[name].reset_index(drop=True),
                                      check_exact=True, check_dtype=False, obj=name)


def report_json(data_dir: Path, store: str, output: Path) -> dict:
    """``dlrlens report --format json`` of ``store`` (``--data data_dir``), without its generation time."""
    assert cli.main(["report", "--data", str(data_dir), "--store", store, "--format", "json",
                     "--output", str(output)]) == 0
    doc = json.loads(Path(output).read_text())
    doc["Summary"] = [row for row in doc["Summary"] if row["key"] != "generated_at"]
    return doc


def campaign_rows(rows: list[dict]) -> dict[tuple, dict]:
    """Campaigns table rows by (campaign, currency)."""
    keyed = {(row["campaign"], row.get("currency")): row for row in rows}
    assert len(keyed) == len(rows), "one row per campaign and currency"
    return keyed


def assert_same_campaigns(engine: str, computed: list[dict], report: list[dict], columns: list[str]) -> None:
    """Every column of ``computed`` (an engine's Campaigns table) equals the report's, row by row
    in the report's order: counts exactly, the rest to 12 digits (Sail's percentile may differ
    from DuckDB's in the last bit of the interpolation; a cost rounded in another engine)."""
    assert [list(row) for row in computed] == [columns] * len(computed), engine
    assert [(row["campaign"], row["currency"]) for row in computed] == \
        [(row["campaign"], row["currency"]) for row in report], engine
    expected = campaign_rows(report)
    for row in computed:
        wanted_row = expected[(row["campaign"], row["currency"])]
        for column in columns:
            value, wanted = row[column], wanted_row[column]
            where = (engine, row["campaign"], row["currency"], column)
            if wanted is None or value is None or value != value:  # NaN: none
                assert wanted is None and (value is None or value != value), where
            elif unit(column) == "count" or isinstance(wanted, str):
                assert value == wanted, where
            else:
                assert value == pytest.approx(wanted, rel=1e-12, abs=0), where
