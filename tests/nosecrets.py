"""Where secrets show in a data folder: for the tests that check none ever does."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def places_holding(folder: Path, *needles: str) -> list[str]:
    """The files under ``folder`` whose bytes hold one of ``needles``, and the Parquet files
    one of whose text values does (their pages are compressed: the bytes alone would hide
    it), as ``path: needle``."""
    assert needles
    assert all(needles)
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data.decode("utf-8", "replace")]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts += [str(v) for column in table.columns for v in column.to_pylist()]
        found += [f"{path.relative_to(folder)}: {n}" for n in needles if any(n in t for t in texts)]
    return found
