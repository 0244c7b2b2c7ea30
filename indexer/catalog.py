"""Read and validate a product catalog (Parquet, ARCHITECTURE.md §3).

Catalogs come from many hands, so one bad row must never stop a nightly job:
every problem is reported with its 0-based row number and a reason, the bad
rows are dropped (or, in strict mode, the whole read fails listing them all),
and everything downstream receives only rows it can use.

Two kinds of problem are kept apart:

* schema problems (a missing required column, a column of the wrong Arrow
  type, an empty file) concern the whole file and raise at once, naming every
  offending column, because no row could be read correctly;
* row problems (missing or duplicate id, empty title or category, an
  unreadable or truncated image) are collected as :class:`RowIssue` records.
  A row with a bad image keeps its other images; a row with no usable image is
  dropped only when the caller needs pictures (``require_image=True``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFile

# Truncated files must fail loudly, not decode into half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False

REQUIRED_STRING_COLUMNS: tuple[str, ...] = ("product_id", "title", "category", "sub_category")
REQUIRED_COLUMNS: tuple[str, ...] = (*REQUIRED_STRING_COLUMNS, "images")
OPTIONAL_STRING_COLUMNS: tuple[str, ...] = ("description",)
OPTIONAL_STRING_LIST_COLUMNS: tuple[str, ...] = ("tags", "queries")

ImageCheck = Literal["none", "exists", "decode"]


class CatalogError(ValueError):
    """Base class of every catalog problem that stops a read."""


class CatalogSchemaError(CatalogError):
    """The file cannot be read as a catalog (missing columns, wrong types)."""


class EmptyCatalogError(CatalogError):
    """The catalog has no rows, or none that survived validation."""


class CatalogValidationError(CatalogError):
    """Strict mode: at least one row is bad. ``issues`` lists all of them."""

    def __init__(self, issues: Sequence[RowIssue]):
        self.issues = list(issues)
        shown = "; ".join(str(issue) for issue in self.issues[:5])
        more = f" (and {len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
        super().__init__(f"{len(self.issues)} bad row(s) in strict mode: {shown}{more}")


@dataclass(frozen=True)
class RowIssue:
    """One problem found in one row (``row`` is the 0-based Parquet row number)."""

    row: int
    product_id: str | None
    column: str
    reason: str
    image_index: int | None = None
    dropped: bool = True  # False: only the image was dropped, the row was kept

    def __str__(self) -> str:
        where = f"row {self.row}"
        if self.product_id:
            where += f" (product_id={self.product_id!r})"
        image = f" image {self.image_index}" if self.image_index is not None else ""
        action = "row dropped" if self.dropped else "image skipped"
        return f"{where}: {self.column}{image}: {self.reason} [{action}]"


@dataclass(frozen=True)
class ImageRef:
    """Where one product image lives: a file path or inline bytes (HF Image layout)."""

    product_id: str
    image_index: int
    path: Path | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"<{len(self.data or b'')} inline bytes>"

    def open(self) -> Image.Image:
        """Decode fully into RGB; raises on a missing, unreadable or truncated image."""
        source = io.BytesIO(self.data) if self.data is not None else self.path
        if source is None:
            raise FileNotFoundError("image has neither bytes nor a path")
        with Image.open(source) as img:
            img.load()
            return img.convert("RGB")

    def fingerprint(self) -> str:
        """Cheap identity of the image content, used to decide whether cached features are stale."""
        if self.data is not None:
            import hashlib

            return "sha1:" + hashlib.sha1(self.data).hexdigest()
        assert self.path is not None
        try:
            stat = self.path.stat()
        except OSError:
            return f"missing:{self.path}"
        return f"file:{self.path}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class Catalog:
    """The good rows of a catalog plus everything that was wrong with the rest."""

    table: pa.Table
    root: Path
    source_rows: list[int]
    images: list[list[ImageRef]]
    issues: list[RowIssue] = field(default_factory=list)
    total_rows: int = 0

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def product_ids(self) -> list[str]:
        return self.table.column("product_id").to_pylist()

    def image_refs(self, max_images_per_product: int | None = None) -> Iterator[tuple[int, ImageRef]]:
        """(kept-row index, image) pairs in catalog order: the stable order shards are cut in."""
        for row, refs in enumerate(self.images):
            for ref in refs[:max_images_per_product]:
                yield row, ref

    @property
    def title_columns(self) -> list[str]:
        """``title`` plus alternative titles in ``title_*`` columns (e.g. the synthetic ``title_en``/``title_zh``)."""
        names = self.table.column_names
        return ["title", *sorted(n for n in names if n.startswith("title_"))]

    def texts(self) -> list[str]:
        """Every text a shopper or merchant wrote: titles (``title`` and any ``title_*``), descriptions, queries.

        What a tokenizer trained on the catalog should cover.
        """
        names = self.table.column_names
        out: list[str] = []
        for name in (*self.title_columns, "description"):
            if name in names:
                out.extend(t for t in self.table.column(name).to_pylist() if isinstance(t, str) and t.strip())
        if "queries" in names:
            out.extend(q for qs in self.table.column("queries").to_pylist() for q in (qs or []) if q and q.strip())
        return out

    def summary(self) -> str:
        dropped = len({issue.row for issue in self.issues if issue.dropped})
        skipped = sum(1 for issue in self.issues if not issue.dropped)
        return (
            f"{len(self)} of {self.total_rows} rows usable, {dropped} dropped, "
            f"{skipped} image(s) skipped, {sum(len(r) for r in self.images)} images"
        )

    def write_report(self, path: str | Path) -> Path:
        """Write every issue as JSON lines so a catalog team can fix the source."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for issue in self.issues:
                fh.write(json.dumps(asdict(issue), ensure_ascii=False) + "\n")
        return path


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _is_image_list(t: pa.DataType) -> bool:
    """list<string> of paths, or list<struct<bytes, path>> as Hugging Face datasets write images."""
    if not _is_list(t):
        return False
    item = t.value_type
    if _is_string(item):
        return True
    if pa.types.is_struct(item):
        names = {item.field(i).name for i in range(item.num_fields)}
        return "bytes" in names or "path" in names
    return False


def check_schema(schema: pa.Schema) -> None:
    """Raise :class:`CatalogSchemaError` naming every missing or mistyped column at once."""
    problems: list[str] = []
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)}")
    for name in (*REQUIRED_STRING_COLUMNS, *OPTIONAL_STRING_COLUMNS):
        if name in schema.names and not _is_string(schema.field(name).type):
            problems.append(f"column {name!r} must be string, found {schema.field(name).type}")
    if "images" in schema.names and not _is_image_list(schema.field("images").type):
        problems.append(
            f"column 'images' must be list<string> (paths) or list<struct<bytes, path>>, "
            f"found {schema.field('images').type}"
        )
    for name in OPTIONAL_STRING_LIST_COLUMNS:
        if name in schema.names:
            t = schema.field(name).type
            if not (_is_list(t) and _is_string(t.value_type)):
                problems.append(f"column {name!r} must be list<string>, found {t}")
    if "price" in schema.names:
        t = schema.field("price").type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)):
            problems.append(f"column 'price' must be numeric, found {t}")
    if problems:
        raise CatalogSchemaError("; ".join(problems))


def _image_refs(product_id: str, raw: list | None, root: Path) -> list[ImageRef]:
    refs: list[ImageRef] = []
    for index, item in enumerate(raw or []):
        if isinstance(item, dict):
            data, path = item.get("bytes"), item.get("path")
            if data is not None:
                refs.append(ImageRef(product_id, index, data=bytes(data)))
                continue
            item = path
        if not item:
            refs.append(ImageRef(product_id, index))  # nothing to open: reported as unreadable
            continue
        p = Path(item)
        refs.append(ImageRef(product_id, index, path=p if p.is_absolute() else root / p))
    return refs


def _check_image(ref: ImageRef, mode: ImageCheck) -> str | None:
    """None when the image is usable, else the reason it is not."""
    if mode == "none":
        return None
    if ref.data is None and ref.path is None:
        return "image entry has neither bytes nor a path"
    if mode == "exists":
        if ref.data is not None:
            return None if ref.data else "empty image bytes"
        return None if ref.path is not None and ref.path.is_file() else f"file not found: {ref.path}"
    try:
        ref.open()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image, never a crash
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def read_catalog(
    path: str | Path,
    *,
    strict: bool = False,
    check_images: ImageCheck = "exists",
    require_image: bool = False,
    workers: int = 8,
) -> Catalog:
    """Read a catalog Parquet file, validating every row.

    ``check_images``: ``"exists"`` (cheap, default) checks that files are there;
    ``"decode"`` fully decodes every image (catches truncation; slower);
    ``"none"`` trusts the file. ``require_image`` drops rows left without any
    usable image (feature extraction and pretraining need one; the indexer can
    still index such a product from its text).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise CatalogSchemaError(f"{path} is not a readable Parquet file: {exc}") from exc
    return validate_table(
        table, path.resolve().parent, name=str(path), strict=strict, check_images=check_images,
        require_image=require_image, workers=workers,
    )


def validate_table(
    table: pa.Table,
    root: Path,
    *,
    name: str = "catalog",
    strict: bool = False,
    check_images: ImageCheck = "exists",
    require_image: bool = False,
    workers: int = 8,
) -> Catalog:
    """Validate an in-memory catalog table whose image paths are relative to ``root`` (see :func:`read_catalog`)."""
    path = name
    check_schema(table.schema)
    if table.num_rows == 0:
        raise EmptyCatalogError(f"catalog {path} has no rows")

    columns = {name: table.column(name).to_pylist() for name in REQUIRED_COLUMNS}
    issues: list[RowIssue] = []
    seen: dict[str, int] = {}
    candidate_rows: list[int] = []
    candidate_refs: list[list[ImageRef]] = []
    for row in range(table.num_rows):
        pid = columns["product_id"][row]
        pid_text = pid.strip() if isinstance(pid, str) else None
        row_problems: list[tuple[str, str]] = []
        if _blank(pid):
            row_problems.append(("product_id", "missing product_id"))
        elif pid_text in seen:
            row_problems.append(("product_id", f"duplicate product_id (first seen in row {seen[pid_text]})"))
        else:
            seen[pid_text] = row  # type: ignore[index]
        for name, what in (("title", "empty title"), ("category", "empty category"), ("sub_category", "empty sub_category")):
            if _blank(columns[name][row]):
                row_problems.append((name, what))
        if row_problems:
            issues.extend(RowIssue(row, pid_text or None, col, why) for col, why in row_problems)
            continue
        candidate_rows.append(row)
        candidate_refs.append(_image_refs(pid_text or "", columns["images"][row], root))

    flat = [ref for refs in candidate_refs for ref in refs]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decodes outside the GIL
        verdicts = iter(list(pool.map(lambda r: _check_image(r, check_images), flat)))

    kept_rows: list[int] = []
    kept_refs: list[list[ImageRef]] = []
    for row, refs in zip(candidate_rows, candidate_refs):
        good: list[ImageRef] = []
        for ref in refs:
            reason = next(verdicts)
            if reason is None:
                good.append(ref)
            else:
                issues.append(RowIssue(row, ref.product_id, "images", reason, ref.image_index, dropped=False))
        if not good and require_image:
            why = "no usable image" if refs else "no images listed"
            issues.append(RowIssue(row, refs[0].product_id if refs else None, "images", why))
            continue
        kept_rows.append(row)
        kept_refs.append(good)

    issues.sort(key=lambda issue: (issue.row, issue.image_index if issue.image_index is not None else -1))
    if strict and issues:
        raise CatalogValidationError(issues)
    if not kept_rows:
        raise EmptyCatalogError(f"catalog {path}: none of its {table.num_rows} rows is usable ({len(issues)} issues)")
    kept = table.take(pa.array(kept_rows, type=pa.int64()))
    return Catalog(kept, root, kept_rows, kept_refs, issues, table.num_rows)
