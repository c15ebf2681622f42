"""What tests read back from an Iceberg store, and the report they compare with the local one.

* :func:`table_column`: one column of every row of the receipts table, read through pyiceberg
  (the catalog configured by ``PYICEBERG_CATALOG__<NAME>__*`` variables in this process).
* :func:`report_json`: ``dlrlens report --format json`` of a store (local or ``iceberg:NAME``),
  in this process, without the one entry that always differs (its generation time).
"""

from __future__ import annotations

import json
from pathlib import Path

from dlrlens import cli
from dlrlens.store.iceberg.table import open_catalog, receipts_table


def table_column(column: str, catalog: str = "lake") -> list:
    """``column`` of every row of catalog ``catalog``'s receipts table (the table must exist)."""
    table = receipts_table(open_catalog(catalog), create=False)
    return table.scan(selected_fields=(column,)).to_arrow()[column].to_pylist()


def report_json(data_dir: Path, store: str, output: Path) -> dict:
    """``dlrlens report --format json`` of ``store`` (``--data data_dir``), without its generation time."""
    assert cli.main(["report", "--data", str(data_dir), "--store", store, "--format", "json",
                     "--output", str(output)]) == 0
    doc = json.loads(Path(output).read_text())
    doc["Summary"] = [row for row in doc["Summary"] if row["key"] != "generated_at"]
    return doc
