"""MovieLens side files: NCF's published ML-1M test split, item titles, genres and release periods.

Same error contract as :mod:`shared.loaders`: every problem is a
:class:`DataError` naming the file, line and field.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from shared.errors import DataError
from shared.loaders import Names, PathArg, _Checker, _decode, _ids, _lines, _read, _split
from shared.schema import ITEM, LINE, USER

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def _tsv_ids(path: Path, names: Names, nfields: int | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Integer-id columns of a tab-separated file (canonical strings) and line numbers."""
    source = str(path)
    text, cut = _decode(_read(path), source, "\t", names)
    lines, lineno = _lines(text)
    cols, lineno, cut = _split(lines, lineno, "\t", nfields, source, cut)
    if len(cols) < 2 and cut is None and len(lineno):
        cut = DataError("expected at least 2 tab-separated fields", source=source, line=int(lineno[0]))
    chk = _Checker(source, lineno)
    ids = [_ids(chk, c, j, names(j) or "", "user" if j == 0 else "item", False) for j, c in enumerate(cols)]
    if (err := chk.error() or cut) is not None:
        raise err
    if not len(lineno):
        raise DataError("no data rows (the file is empty)", source=source)
    return [c.to_numpy(zero_copy_only=False) for c in ids], lineno


def load_ncf_split(ncf_dir: PathArg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """NCF leave-one-out test split from ``test.rating.tsv`` and ``test.negative.tsv``.

    Returns ``(test, negatives)``: columns user, item, line and user, negatives (list of str), line.
    Line k of both files must name the same user, and each user appears once.
    """
    rating, negative = Path(ncf_dir) / "test.rating.tsv", Path(ncf_dir) / "test.negative.tsv"
    (user, item), lines = _tsv_ids(rating, lambda j: ("user", "item")[j] if j < 2 else None, 2)
    dup = pd.Series(user).duplicated().to_numpy()
    if dup.any():
        r = int(np.argmax(dup))
        raise DataError(f"user {user[r]} appears twice", source=str(rating), line=int(lines[r]), field="user")
    ncols, nlines = _tsv_ids(negative, lambda j: "user" if j == 0 else f"negative {j}", None)
    common = min(len(user), len(ncols[0]))
    mism = np.flatnonzero(ncols[0][:common] != user[:common])
    if mism.size:
        r = int(mism[0])
        raise DataError(
            f"user {ncols[0][r]} but line {lines[r]} of {rating.name} has user {user[r]}",
            source=str(negative),
            line=int(nlines[r]),
            field="user",
        )
    if len(user) != len(ncols[0]):
        raise DataError(f"{len(ncols[0])} rows but {rating.name} has {len(user)}", source=str(negative))
    test = pd.DataFrame({USER: pd.Series(user, dtype=object), ITEM: pd.Series(item, dtype=object), LINE: lines})
    negs = pd.Series(np.column_stack(ncols[1:]).tolist(), dtype=object)
    return test, pd.DataFrame({USER: pd.Series(ncols[0], dtype=object), "negatives": negs, LINE: nlines})


def _movies(path: PathArg) -> list[tuple[str, str, list[str]]]:
    """(id, title, genres) of ML-100K ``u.item`` or ML-1M ``movies.dat`` (latin-1)."""
    source = str(path)
    lines = _read(path).decode("latin-1").replace("\r\n", "\n").split("\n")
    first = next((s for s in lines if s.strip()), None)
    if first is None:
        raise DataError("no data rows (the file is empty)", source=source)
    ml1m, out, seen = "::" in first, [], {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if ml1m:
            mid, _, rest = line.partition("::")
            title, sep, genre_text = rest.rpartition("::")
            if not sep:
                raise DataError("expected id::title::genres", source=source, line=no)
            genres = [g for g in genre_text.split("|") if g]
        else:
            parts = line.split("|")
            if len(parts) != 24:
                raise DataError(f"expected 24 fields, found {len(parts)}", source=source, line=no)
            mid, title, flags = parts[0], parts[1], parts[5:]
            for name, flag in zip(ML100K_GENRES, flags, strict=True):
                if flag not in ("0", "1"):
                    raise DataError(f"genre flag {flag!r} is not 0 or 1", source=source, line=no, field=name)
            genres = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"]
        if not (mid.isascii() and mid.isdigit()):
            raise DataError(f"non-numeric item id {mid!r}", source=source, line=no, field="item")
        if not title.strip():
            raise DataError("empty title", source=source, line=no, field="title")
        mid = str(int(mid))
        if mid in seen:
            raise DataError(f"item {mid} also on line {seen[mid]}", source=source, line=no, field="item")
        seen[mid] = no
        out.append((mid, title, genres))
    return out


def load_item_titles(path: PathArg) -> dict[str, str]:
    """Item id -> title from ML-100K ``u.item`` or ML-1M ``movies.dat``."""
    return {mid: title for mid, title, _ in _movies(path)}


def load_item_genres(path: PathArg) -> dict[str, list[str]]:
    """Item id -> genre names from ML-100K ``u.item`` or ML-1M ``movies.dat``."""
    return {mid: genres for mid, _, genres in _movies(path)}


PERIOD_BINS = 12  # release periods: the catalog's years cut into this many bins of (about) equal item count
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def release_year(title: str) -> int | None:
    """The year MovieLens writes at the end of a title (``"Toy Story (1995)"``), or None."""
    match = _YEAR.search(title.strip())
    return int(match.group(1)) if match else None


def period_tags(years: list[int | None], bins: int = PERIOD_BINS) -> list[str | None]:
    """One release-period tag per item: the catalog's years cut at their quantiles into ``bins`` bins of about
    equal item count (fewer where years repeat), e.g. ``"released 1995"`` or ``"released 1983-1987"``.

    Reads the catalog only (public metadata, no interactions); items without a year get None.
    """
    known = np.array([y for y in years if y is not None])
    if not len(known):
        return [None] * len(years)
    edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1], method="higher"))
    bounds = [int(known.min()), *edges.astype(int).tolist(), int(known.max()) + 1]
    labels = [f"released {lo}" if hi - lo == 1 else f"released {lo}-{hi - 1}" for lo, hi in pairwise(bounds)]
    return [None if y is None else labels[int(np.searchsorted(edges, y, side="right"))] for y in years]


def load_item_tags(path: PathArg) -> dict[str, list[str]]:
    """Item id -> public tags: its genres and its release period (:func:`period_tags`), from ML-100K ``u.item``
    or ML-1M ``movies.dat``. The item features of genre initialisation and of the floor model."""
    movies = _movies(path)
    periods = period_tags([release_year(title) for _, title, _ in movies])
    pairs = zip(movies, periods, strict=True)
    return {mid: [*genres, *([period] if period else [])] for (mid, _, genres), period in pairs}


# --- prepared MovieLens datasets for simulations and benchmarks -------------------------------
SOURCES = ("ml-100k", "ml-1m")


def prepare_movielens(name: str, data_dir: PathArg, out: PathArg, keys_dir: PathArg, *, seed: int = 42) -> Path:
    """Prepare ML-100K (leave-latest-out) or ML-1M (NCF's exact test split) with the owner's keys.

    ML-1M uses the original ``ratings.dat`` when present, else the timestamp-less
    ``derived/ratings_no_timestamp.dat.gz``. Genres come from the public item files.
    """
    from shared import loaders, prepared
    from shared.keys import generate_keys, load_keys

    root = Path(data_dir) / "movielens" / name
    if name == "ml-100k":
        raw_path, items, ncf = root / "u.data", root / "u.item", None
    elif name == "ml-1m":
        raw_path = root / "ratings.dat"
        if not raw_path.exists():
            raw_path = root / "derived" / "ratings_no_timestamp.dat.gz"
        items, ncf = root / "movies.dat", root / "ncf"
    else:
        raise DataError(f"unknown MovieLens dataset {name!r} (one of {', '.join(SOURCES)})")
    if not raw_path.exists():
        raise DataError("MovieLens file not found (set FEDREC_DATA_DIR to the data directory)", source=str(raw_path))
    keys_dir = Path(keys_dir)
    keys = load_keys(keys_dir) if (keys_dir / "user.key").exists() else generate_keys(keys_dir)
    raw = loaders.load_interactions(raw_path, fmt=name)
    fixed_test, fixed_neg = load_ncf_split(ncf) if ncf is not None else (None, None)
    tables = prepared.prepare(raw, keys, seed=seed, source={"name": name, "format": name, "dataset_id": name},
                              fixed_test=fixed_test, fixed_negatives=fixed_neg, item_genres=load_item_tags(items))
    tables.manifest["reid_binding"] = f"{name}:{tables.catalog.content_hash}"
    prepared.write(tables, out, overwrite=True)
    assert tables.reid is not None
    tables.reid.save(keys_dir / "reid" / f"{name}.enc", keys.owner, bound_to=tables.manifest["reid_binding"])
    return Path(out)
