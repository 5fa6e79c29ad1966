"""Reading a dataset from wherever it lives, as rows or as checked chunks.

Local JSONL goes through the fast path (`_jsonl`); JSON arrays, Parquet and CSV are read
with their own readers (orjson, pyarrow.parquet, the csv module) so each row keeps its
number; Hub datasets stream through `datasets`, so memory stays bounded. `datasets` is
not used for local files: it casts every file to one Arrow schema first, and a row that
breaks the schema then fails the whole load without saying which row it was.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
import xxhash

from schemas.request import LOCAL_DATASET_SUFFIXES, DatasetSource
from schemas.validation import IssueCode
from tasks.validation._jsonl import BOM, ChunkResult, scan_jsonl, sniff_jsonl
from tasks.validation._rules import check_row

ROWS_PER_CHUNK = 10_000


class SourceError(Exception):
    """The dataset cannot be read at all; `code` says why."""

    def __init__(self, code: IssueCode, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.file = file


@dataclass
class DataFile:
    """One local file of the dataset, with the reader its name calls for."""

    path: Path
    name: str
    kind: str  # jsonl | json | parquet | csv


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return name.rsplit(".", 1)[-1]


def local_files(source: DatasetSource) -> list[DataFile]:
    """The files of a local dataset: the file itself, or every supported file under the folder."""
    root = Path(source.path).expanduser()
    if root.is_file():
        return [DataFile(root, root.name, _kind(root))]
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name.lower().endswith(LOCAL_DATASET_SUFFIXES)
    )
    if not files:
        raise SourceError(
            IssueCode.NO_DATA_FILES,
            f"the folder {source.path} holds no {', '.join(LOCAL_DATASET_SUFFIXES)} files",
        )
    return [DataFile(p, str(p.relative_to(root)), _kind(p)) for p in files]


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _json_is_array(path: Path) -> bool:
    with _open(path) as handle:
        head = handle.read(4096).removeprefix(BOM).lstrip()
    return head.startswith(b"[")


def check_rows(rows: Iterable[Any], column_map: dict[str, str]) -> Iterator[ChunkResult]:
    """Check rows that are already decoded (JSON array items, table rows), in chunks."""
    sharegpt = column_map.get("conversations") == "messages"
    result = ChunkResult()
    for row in rows:
        result.lines += 1
        number = result.lines
        if column_map and isinstance(row, dict):
            row = {column_map.get(k, k): v for k, v in row.items()}
        fmt, issues = check_row(row, sharegpt_messages=sharegpt)
        result.rows += 1
        result.add_format(number, fmt)
        for code, column, message in issues:
            result.add_issue(number, code, column, message)
        if fmt is not None:
            label = row.get("label")
            if isinstance(label, bool):
                result.labels[0 if label else 1] += 1
            try:
                encoded = orjson.dumps(
                    row, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str
                )
            except (TypeError, orjson.JSONEncodeError):
                encoded = (
                    None  # a value orjson cannot serialise: the row is not compared for duplicates
                )
            if encoded is not None:
                result.hashes.append(xxhash.xxh3_64_intdigest(encoded))
                result.hash_lines.append(number)
        if result.lines >= ROWS_PER_CHUNK:
            yield result
            result = ChunkResult()
    if result.lines:
        yield result


def _json_array(path: Path) -> list[Any]:
    with _open(path) as handle:
        data = handle.read()
    try:
        rows = orjson.loads(data.removeprefix(BOM))
    except orjson.JSONDecodeError as exc:
        raise SourceError(IssueCode.NOT_JSON, f"not valid JSON: {exc}") from None
    if not isinstance(rows, list):
        raise SourceError(
            IssueCode.NOT_AN_OBJECT,
            "a .json file must hold an array of row objects (or JSON lines)",
        )
    return rows


def _reading(rows: Iterator[Any], name: str) -> Iterator[Any]:
    """`rows`, with a read error part-way through the file turned into a SourceError."""
    try:
        yield from rows
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, EOFError) as exc:
        raise SourceError(IssueCode.UNREADABLE_FILE, f"cannot read {name}: {exc}", name) from None


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_CHUNK):
        yield from batch.to_pylist()


def _csv_rows(path: Path) -> Iterator[dict]:
    with _open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        for row in csv.DictReader(text):
            yield {k: v for k, v in row.items() if k is not None}


def scan_file(
    data: DataFile, column_map: dict[str, str]
) -> tuple[list[str], Iterator[ChunkResult]]:
    """The file's columns (from its first rows) and its checked chunks."""
    try:
        if data.kind == "jsonl" or (data.kind == "json" and not _json_is_array(data.path)):
            columns, messages_only = sniff_jsonl(str(data.path))
            return columns, _reading(
                scan_jsonl(str(data.path), column_map, messages_only=messages_only), data.name
            )
        if data.kind == "json":
            rows = _json_array(data.path)
            columns = list(
                dict.fromkeys(k for row in rows[:1000] if isinstance(row, dict) for k in row)
            )
            return columns, check_rows(rows, column_map)
        if data.kind == "parquet":
            import pyarrow.parquet as pq

            columns = pq.read_schema(data.path).names
            return columns, check_rows(_reading(_parquet_rows(data.path), data.name), column_map)
        if data.kind == "csv":
            with _open(data.path) as raw:
                header = next(
                    csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")), []
                )
            return header, check_rows(_reading(_csv_rows(data.path), data.name), column_map)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, EOFError) as exc:
        raise SourceError(
            IssueCode.UNREADABLE_FILE, f"cannot read {data.name}: {exc}", data.name
        ) from None
    raise SourceError(IssueCode.UNREADABLE_FILE, f"{data.name}: unsupported file type", data.name)


READ_BYTES = 4 * 1024 * 1024


def _decoded_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every JSONL line that decodes, holding one copy of a line at most.

    Iterating a file by lines joins a long line from its pieces (twice its size in memory, 400 MB
    for a 200 MB row) and keeps the bytes alive beside the decoded value; here a line is decoded
    in place from the read buffer (which grows without copying) and the buffer is emptied first.
    """
    buffer = bytearray()
    number = 0
    with _open(path) as handle:
        at_end = False
        while not at_end:
            block = handle.read(READ_BYTES)
            at_end = not block
            if number == 0 and not buffer:
                block = block.removeprefix(BOM)
            searched = len(buffer)
            buffer += block
            start = 0
            while True:
                end = buffer.find(b"\n", max(start, searched))
                if end == -1:
                    if not at_end or start >= len(buffer):
                        break
                    end = len(buffer)  # the last line has no newline
                number += 1
                with memoryview(buffer) as view, view[start:end] as line:
                    try:  # msgspec builds a long string once; orjson needs twice its size
                        row = msgspec.json.decode(line) if line.nbytes else None
                    except msgspec.DecodeError:
                        row = None
                start = end + 1
                if row is not None:
                    if start >= len(buffer):
                        buffer.clear()  # free a huge line before its value is used
                        start = 0
                    yield number, row
            del buffer[:start]


def iter_file_rows(data: DataFile, column_map: dict[str, str]) -> Iterator[tuple[int, Any]]:
    """(row number, row) for every row that decodes, with the column map applied."""
    if data.kind == "jsonl" or (data.kind == "json" and not _json_is_array(data.path)):
        rows = _decoded_lines(data.path)
    elif data.kind == "json":
        rows = enumerate(_json_array(data.path), start=1)
    elif data.kind == "parquet":
        rows = enumerate(_parquet_rows(data.path), start=1)
    else:
        rows = enumerate(_csv_rows(data.path), start=1)
    for number, row in _reading(rows, data.name):
        if isinstance(row, dict):
            yield number, {column_map.get(k, k): v for k, v in row.items()} if column_map else row


def open_hub(source: DatasetSource):
    """The Hub dataset as a streaming `IterableDataset`; a clear SourceError when it cannot be reached."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    where = (
        source.path
        + (f" (config {source.config})" if source.config else "")
        + (f" at revision {source.revision}" if source.revision else "")
    )
    try:
        return load_dataset(
            source.path, source.config, split=source.split, revision=source.revision, streaming=True
        )
    except DatasetNotFoundError as exc:
        raise SourceError(
            IssueCode.DATASET_NOT_FOUND,
            f"the Hub has no dataset {where} you can read ({exc}); check the id, or log in "
            "with a token that can read it",
        ) from None
    except ConnectionError as exc:
        raise SourceError(
            IssueCode.HUB_UNREACHABLE,
            f"cannot reach the Hugging Face Hub for {where} ({exc}); check the network "
            "(HF_HUB_OFFLINE, HF_ENDPOINT), or download the dataset and pass a local path",
        ) from None
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise SourceError(
                IssueCode.SPLIT_NOT_FOUND, f"{where} has no split {source.split!r}: {exc}"
            ) from None
        raise SourceError(IssueCode.UNREADABLE_FILE, f"cannot load {where}: {exc}") from None
    except OSError as exc:
        raise SourceError(
            IssueCode.HUB_UNREACHABLE, f"cannot load {where} from the Hub: {exc}"
        ) from None


def hub_rows(dataset: Any) -> Iterator[Any]:
    """The rows of a streaming Hub dataset; errors while streaming become SourceError."""
    try:
        yield from dataset
    except (ConnectionError, OSError) as exc:
        raise SourceError(
            IssueCode.HUB_UNREACHABLE, f"lost the Hub while streaming: {exc}"
        ) from None
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise SourceError(IssueCode.SPLIT_NOT_FOUND, str(exc)) from None
        raise SourceError(IssueCode.UNREADABLE_FILE, f"cannot read the dataset: {exc}") from None


def iter_hub_rows(dataset: Any, column_map: dict[str, str]) -> Iterator[tuple[int, Any]]:
    """(row number, row) of a streaming Hub dataset, with the column map applied."""
    for number, row in enumerate(hub_rows(dataset), start=1):
        yield number, {column_map.get(k, k): v for k, v in row.items()} if column_map else row


def load_rows(source: DatasetSource):
    """The dataset through `datasets`: a `Dataset` for local files, a streaming `IterableDataset` for the Hub.

    Column renames of `source.column_map` are applied. Used where the rows themselves are
    needed (the GGUF quality gate's held-out slice), not for validation.
    """
    from datasets import load_dataset

    if source.is_local:
        files = local_files(source)
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}[
            files[0].kind
        ]
        dataset = load_dataset(builder, data_files=[str(f.path) for f in files], split="train")
    else:
        dataset = load_dataset(
            source.path, source.config, split=source.split, revision=source.revision, streaming=True
        )
    renames = {k: v for k, v in source.column_map.items() if k in (dataset.column_names or [])}
    return dataset.rename_columns(renames) if renames else dataset
