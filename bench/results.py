"""Result files: append rows to CSVs atomically, so a crash or kill never leaves a truncated or duplicated row.

Each append takes an exclusive lock (``fcntl``) on a side file, reads the existing CSV, adds the rows (replacing any
row with the same key: a re-run cell supersedes its old row), writes a temporary file in the same directory, fsyncs
it and ``os.replace``s it over the original (atomic on POSIX).
"""
from __future__ import annotations

import fcntl
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd


def positional(x: float, digits: int = 4, sign: bool = False) -> str:
    """``x`` to ``digits`` significant digits in positional notation (``-0.0000462``, ``12350``), never the
    scientific notation of ``:g`` (``-4.62e-05``), which a reader of a table skims past; trailing zeros dropped."""
    x = float(x) + 0.0  # -0.0 (an unchanged value's negated change) prints as 0
    if not math.isfinite(x) or (x != 0 and (abs(x) < 1e-6 or abs(x) >= 1e12)):
        return f"{x:{'+' if sign else ''}.{digits}g}"
    text = np.format_float_positional(x, precision=digits, unique=True, fractional=False, trim="-")
    return ("+" + text if sign and not text.startswith("-") else text)


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_atomic(path: Path, text: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    # only empty fields are missing values: a status of "nan" (a cell stopped by a NaN loss) stays the string "nan"
    # (pandas' defaults would read it as a missing value and the next append would write it back empty)
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def append_rows(path: str | os.PathLike, rows: Iterable[dict], key: Sequence[str] | None = None) -> pd.DataFrame:
    """Append ``rows``; where ``key`` columns match an existing row, the new row replaces it. Returns the table."""
    path = Path(path)
    new = pd.DataFrame(list(rows))
    with locked(path):
        old = read_csv(path)
        if key and not old.empty and all(k in old for k in key):
            keys = set(map(tuple, new[list(key)].astype(str).values.tolist()))
            old = old[~old[list(key)].astype(str).apply(tuple, axis=1).isin(keys)]
        table = pd.concat([old, new], ignore_index=True) if not old.empty else new
        write_atomic(path, table.to_csv(index=False))
    return table


def drop_rows(path: str | os.PathLike, column: str, values: Iterable[str]) -> None:
    """Remove the rows whose ``column`` (as text) is one of ``values`` (atomic, locked)."""
    path, values = Path(path), {str(v) for v in values}
    with locked(path):
        table = read_csv(path)
        if not table.empty and column in table:
            write_atomic(path, table[~table[column].astype(str).isin(values)].to_csv(index=False))
