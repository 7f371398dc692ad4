"""Data embedded in a map page: script-safe JSON and compact base64 columns.

A map of 100,000 leads must stay under a few MB, so leads travel as columns of small unsigned
integers (coordinates quantised to 1e-6 degrees, dictionary indices, minutes) packed little-endian
in the fewest bytes that hold the column's maximum, base64 encoded. ``templates/columns.js``
decodes them in the browser.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["dictionary_encode", "pack_uint", "script_json"]

_SCRIPT_ESCAPES = (
    ("&", "\\u0026"),
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)
# A '{' followed by '{', '%' or '#' would open a Jinja tag if the text is ever compiled as a
# template (branca does that to rendered elements). Structural JSON never has one: an object
# starts '{"' or '{}', so each match is inside a string, where \u007b reads back as '{'.
_JINJA_OPEN = re.compile(r"\{(?=[{%#])")


def script_json(value: Any) -> str:
    """JSON that is safe to place inside an HTML ``<script>`` element.

    ``</script>``, ``<!--`` and HTML entities cannot end or change the script because ``<``,
    ``>`` and ``&`` become ``\\u003c``-style escapes (still the same string once parsed);
    U+2028/U+2029 are escaped for older JavaScript engines, and a ``{`` that could open a Jinja
    tag (``{{``, ``{%``, ``{#``) becomes ``\\u007b``.

    Parameters
    ----------
    value : Any
        JSON-serialisable value.

    Returns
    -------
    str
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # str.replace runs in C over megabytes of payload; str.translate with a dict does not
    for raw, escaped in _SCRIPT_ESCAPES:
        text = text.replace(raw, escaped)
    return _JINJA_OPEN.sub(r"\\u007b", text) if "{" in text else text


def pack_uint(values: npt.ArrayLike) -> dict[str, Any]:
    """Pack non-negative integers into a base64 column.

    Parameters
    ----------
    values : array_like of int
        Values in ``[0, 2**32)``.

    Returns
    -------
    dict
        ``{"w": bytes per value, "b": base64 text}``.

    Raises
    ------
    ValueError
        Negative values or values of 2**32 or more.
    """
    arr = np.asarray(values, dtype=np.int64).ravel()
    top = int(arr.max()) if arr.size else 0
    if arr.size and (int(arr.min()) < 0 or top >= 2**32):
        raise ValueError(f"values span [{arr.min()}, {top}]; pack_uint needs [0, 2**32)")
    width = 1 if top < 2**8 else 2 if top < 2**16 else 3 if top < 2**24 else 4
    raw = arr.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :width]
    return {"w": width, "b": base64.b64encode(raw.tobytes()).decode("ascii")}


def _encode_categorical(
    values: pd.Series, order: Sequence[str] | None
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """:func:`dictionary_encode` of a categorical column, from its codes (no per-row strings)."""
    labels = [str(c) for c in values.cat.categories] + [""]  # the last one stands for missing
    codes = np.asarray(values.cat.codes, dtype=np.int64)
    codes = np.where(codes < 0, len(labels) - 1, codes)
    if order is not None:
        where = {v: i for i, v in enumerate(order)}
        table = np.array([where.get(lb, len(order) - 1) for lb in labels], dtype=np.int64)
        return table[codes], list(order)
    used = np.flatnonzero(np.bincount(codes, minlength=len(labels)))
    uniq, inverse = np.unique(np.array([labels[i] for i in used], dtype=str), return_inverse=True)
    remap = np.zeros(len(labels), dtype=np.int64)
    remap[used] = inverse.ravel()
    return remap[codes], [str(u) for u in uniq]


def dictionary_encode(
    values: pd.Series | Sequence[Any], *, order: Sequence[str] | None = None
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Codes and the dictionary of a text column (missing values become ``''``).

    Parameters
    ----------
    values : Series or sequence
        Text values; a categorical Series is encoded from its codes (fast at 100,000 rows).
    order : sequence of str, optional
        Fixed dictionary (e.g. statuses); values outside it map to its last entry.

    Returns
    -------
    codes : numpy.ndarray of int
    dictionary : list of str
        Without ``order``: the distinct values present, sorted.
    """
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        return _encode_categorical(values, order)
    s = pd.Series(values, dtype="object").fillna("").astype(str)
    if order is not None:
        codes = np.asarray(pd.Index(list(order)).get_indexer(s), dtype=np.int64)
        codes[codes < 0] = len(order) - 1
        return codes, list(order)
    codes_arr, uniques = pd.factorize(s, sort=True)
    return np.asarray(codes_arr, dtype=np.int64), [str(u) for u in uniques]
