"""Tokenize once, then sample packed sequences from memory-mapped shards (nanoGPT style).

``tokenize_source`` turns one text source into a dataset folder::

    out_dir/
      manifest.json         what was tokenized, how, and what each shard holds (written last)
      train_000000.bin      raw token ids, no header: np.memmap(path, dtype, mode="r") reads them
      train_000001.bin      ... at most ``shard_tokens`` ids per shard
      val_000000.bin

Each split is one token stream: its documents in source order, each followed by the separator id
(the tokenizer's EOS, else its SEP, else its BOS), cut into shards only for size; a shard boundary can
fall inside a document. Ids are ``uint16`` when every id fits (vocab size <= 65536), else ``uint32``.
Text is encoded without special tokens (no BOS is added), so the separator is the only special id.

Sources, detected from the path (or named with ``kind=``):

- ``text``: one text file; a document is a maximal run of non-blank lines (a blank line holds only
  whitespace), its lines joined with ``"\\n"``. Documents are thus separated by one or more blank lines.
- ``text_dir``: a folder of ``.txt`` files, one document each (the whole file, unchanged).
- ``jsonl``: a ``.jsonl`` file or a folder of them; one JSON object per line, its ``text_field`` a string.
- ``parquet``: a ``.parquet`` file or a folder of them; the ``text_field`` column (needs pyarrow).
- ``hf``: a folder written by ``datasets.Dataset.save_to_disk``; the ``text_field`` column (needs datasets).

Whitespace-only documents are skipped. The validation split holds whole documents:
``n_val = max(1, round(val_fraction * N))`` of the source's N documents, picked by
``np.random.default_rng(seed).choice(N, n_val, replace=False)`` over the documents in source order. Or a
source names its validation documents itself (``val_source``: another file or folder, every document of which is
validation and none training; e.g. the biographies of people held out of training).

``TokenDataset`` opens such a folder read-only; ``MixtureSampler`` draws batches of packed windows of
``seq_len + 1`` tokens from several datasets by weight, with an exact replay share, and its whole
position is the step counter.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from fractions import Fraction
from math import ceil, floor
from pathlib import Path
from typing import Any

import numpy as np
import torch

import retain
from retain.errors import ConfigError, DatasetError
from retain.io import atomic_path, write_json_atomic

FORMAT = "retain.cpt.tokens/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
KINDS = ("text", "text_dir", "jsonl", "parquet", "hf")
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard, as in nanoGPT's FineWeb script
ENCODE_BATCH = 512  # documents per tokenizer call: fast tokenizers parallelize within a batch
SPLIT_RULE = (
    "n_val = max(1, round(val_fraction * N)); val = np.random.default_rng(seed).choice(N, n_val, replace=False)"
)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id below ``vocab_size``: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# --- sources ------------------------------------------------------------------------------------


def detect_kind(path: Path) -> str:
    """The source kind of ``path`` (see the module docstring); DatasetError if it is missing or unknown."""
    if not path.exists():
        raise DatasetError(f"text source {path} does not exist", "check the path (a file or a folder)")
    if path.is_file():
        by_suffix = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
        if path.suffix.lower() in by_suffix:
            return by_suffix[path.suffix.lower()]
        raise DatasetError(
            f"cannot tell what kind of text source {path} is from its suffix {path.suffix!r}",
            f"use .txt, .jsonl or .parquet, or pass kind= (one of {', '.join(KINDS)})",
        )
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DatasetError(
            f"{path} holds a datasets.DatasetDict (splits {splits}), not one dataset",
            f"point at one split's folder, e.g. {path / (splits[0] if splits else 'train')}",
        )
    if (path / "state.json").exists() and (path / "dataset_info.json").exists():
        return "hf"
    for suffix, kind in ((".txt", "text_dir"), (".jsonl", "jsonl"), (".parquet", "parquet")):
        if any(path.glob(f"*{suffix}")):
            return kind
    raise DatasetError(
        f"folder {path} holds no .txt, .jsonl or .parquet files and is not a datasets save_to_disk folder",
        "put the documents in .txt files (one document each), .jsonl or .parquet files",
    )


def source_files(path: Path, kind: str) -> list[Path]:
    """The files whose bytes make up the source, in reading order (their hashes key the manifest)."""
    if path.is_file():
        return [path]
    if kind == "hf":
        return sorted(p for p in path.rglob("*") if p.is_file())
    suffix = {"text_dir": ".txt", "jsonl": ".jsonl", "parquet": ".parquet"}[kind]
    return sorted(path.glob(f"*{suffix}"))


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{file} is not UTF-8 text ({e})", "re-encode the file as UTF-8") from e


def _lines(file: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file, split as ``str.splitlines`` would, streamed: memory stays flat however
    large the file (reading it whole and splitting it held ~3x its size)."""
    try:
        with open(file, encoding="utf-8") as f:
            for physical in f:
                yield from physical.splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{file} is not UTF-8 text ({e})", "re-encode the file as UTF-8") from e


def _text_file_documents(file: Path) -> Iterator[str]:
    """Documents of one text file: maximal runs of non-blank lines."""
    lines: list[str] = []
    for line in _lines(file):
        if line.strip():
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _jsonl_documents(file: Path, field: str) -> Iterator[str]:
    for lineno, line in enumerate(_lines(file), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{file}:{lineno} is not valid JSON ({e})", "write one JSON object per line") from e
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DatasetError(
                f"{file}:{lineno} has no string field {field!r}",
                f"give every line a {field!r} string, or pass text_field= naming the field that holds the text",
            )
        yield record[field]


def _column_documents(file: Path, column: list, field: str, first_row: int) -> Iterator[str]:
    for row, text in enumerate(column, start=first_row):
        if not isinstance(text, str):
            raise DatasetError(f"{file} row {row}: {field!r} is {text!r}, not a string", "drop or fill that row")
        yield text


def _parquet_documents(file: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq  # lazy: only parquet sources need pyarrow
    except ImportError as e:
        raise DatasetError(f"reading {file} needs pyarrow, which is not installed", "pip install pyarrow") from e
    parquet = pq.ParquetFile(file)
    if field not in parquet.schema_arrow.names:
        raise DatasetError(
            f"{file} has no column {field!r} (columns: {parquet.schema_arrow.names})",
            "pass text_field= naming the column that holds the text",
        )
    row = 0
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        column = batch.column(0).to_pylist()
        yield from _column_documents(file, column, field, row)
        row += len(column)


def _hf_documents(folder: Path, field: str) -> Iterator[str]:
    try:
        import datasets  # lazy: only save_to_disk sources need datasets
    except ImportError as e:
        raise DatasetError(f"reading {folder} needs datasets, which is not installed", "pip install datasets") from e
    dataset = datasets.load_from_disk(str(folder))
    if field not in dataset.column_names:
        raise DatasetError(
            f"{folder} has no column {field!r} (columns: {dataset.column_names})",
            "pass text_field= naming the column that holds the text",
        )
    row = 0
    for batch in dataset.select_columns([field]).iter(batch_size=1024):
        yield from _column_documents(folder, batch[field], field, row)
        row += len(batch[field])


def iter_documents(path: Path, kind: str, text_field: str = "text") -> Iterator[str]:
    """Every non-blank document of the source, in source order (files in sorted name order)."""
    if kind == "hf":
        docs: Iterator[str] = _hf_documents(path, text_field)
    else:
        readers = {
            "text": _text_file_documents,
            "text_dir": lambda f: iter([_read_text(f)]),
            "jsonl": lambda f: _jsonl_documents(f, text_field),
            "parquet": lambda f: _parquet_documents(f, text_field),
        }
        docs = (doc for f in source_files(path, kind) for doc in readers[kind](f))
    return (doc for doc in docs if doc.strip())


def file_sha256(file: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- tokenizer ----------------------------------------------------------------------------------


def _separator_id(tokenizer: Any) -> int:
    """The id put after every document: EOS, else SEP, else BOS (GPT-style tokenizers share one)."""
    for attr in ("eos_token_id", "sep_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    raise ConfigError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no EOS, SEP or BOS token to end documents",
        "add one: tokenizer.add_special_tokens({'eos_token': '<|endoftext|>'})",
    )


def _tokenizer_info(tokenizer: Any) -> dict:
    """What identifies the tokenizer: a changed vocabulary, merges or normalizer re-tokenizes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # A fast tokenizer's full definition; a slow one's vocabulary is the best stand-in.
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "separator_id": _separator_id(tokenizer),
        "sha256": hashlib.sha256(definition.encode()).hexdigest(),
    }


def _encode(tokenizer: Any, docs: list[str]) -> list[list[int]]:
    # verbose=False: a long document is expected here, not an error (no model max length applies)
    return tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]


# --- tokenize_source ----------------------------------------------------------------------------


class _ShardWriter:
    """Appends ids to ``<split>_NNNNNN.bin`` files of at most ``shard_tokens`` ids each."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self.documents = 0

    def add_document(self, ids: np.ndarray) -> None:
        self.documents += 1
        while len(ids):
            if self._file is None or self.shards[-1]["num_tokens"] == self.shard_tokens:
                self._close_file()
                name = f"{self.split}_{len(self.shards):06d}.bin"
                self._file = open(self.folder / name, "wb")
                self.shards.append({"file": name, "num_tokens": 0})
            room = self.shard_tokens - self.shards[-1]["num_tokens"]
            self._file.write(ids[:room].astype(self.dtype).tobytes())
            self.shards[-1]["num_tokens"] += len(ids[:room])
            ids = ids[room:]

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())  # durable before the folder is renamed into place
            self._file.close()
            self._file = None

    def close(self) -> dict:
        self._close_file()
        return {
            "num_tokens": sum(s["num_tokens"] for s in self.shards),
            "num_documents": self.documents,
            "shards": self.shards,
        }


def _fingerprint(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _is_up_to_date(out_dir: Path, fingerprint: str) -> bool:
    """True when out_dir holds an intact dataset made from the same inputs."""
    try:
        dataset = TokenDataset(out_dir)
    except DatasetError:
        return False
    return dataset.manifest.get("fingerprint") == fingerprint


def tokenize_source(
    source: str | Path,
    tokenizer: Any,
    out_dir: str | Path,
    val_fraction: float = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    seed: int = 0,
    text_field: str = "text",
    kind: str | None = None,
    val_source: str | Path | None = None,
) -> Path:
    """Tokenize ``source`` into ``out_dir`` (layout in the module docstring) and return ``out_dir``.

    ``val_source`` (same kind as ``source``): the validation split is its documents, all of ``source`` trains
    (``val_fraction`` must then be 0).

    ``tokenizer`` is a transformers tokenizer or a name/path for ``AutoTokenizer.from_pretrained``.
    When ``out_dir`` already holds an intact dataset of the same source bytes (SHA-256 of each file),
    tokenizer, split rule and shard size, nothing is written. Otherwise the dataset is built in a
    temporary sibling folder and renamed into place, so ``out_dir`` is never half-written.
    """
    source, out_dir = Path(source).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction} is not in [0, 1)", "use e.g. 0.01 (1% of the documents)")
    if shard_tokens < 1 or seed < 0:
        raise ConfigError(f"shard_tokens={shard_tokens}, seed={seed}", "use shard_tokens >= 1 and seed >= 0")
    kind = kind or detect_kind(source)
    if val_source is not None:
        val_source = Path(val_source).expanduser().resolve()
        if val_fraction:
            raise ConfigError(
                f"val_fraction={val_fraction} and a val_source ({val_source}) both define the validation split",
                "pass val_fraction=0 with val_source",
            )
        if detect_kind(val_source) != kind:
            raise DatasetError(f"val_source {val_source} is not a {kind} source like {source}", "give both as one kind")
    if kind not in KINDS:
        raise ConfigError(f"unknown source kind {kind!r}", f"use one of {', '.join(KINDS)}")
    if not source.exists():
        raise DatasetError(f"text source {source} does not exist", "check the path (a file or a folder)")
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer  # lazy: importing transformers takes seconds

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))

    files = source_files(source, kind)
    if not files:
        raise DatasetError(f"text source {source} holds no {kind} files", "add documents or fix the path")
    file_info = [
        {
            "path": str(f.relative_to(source)) if f != source else f.name,
            "sha256": file_sha256(f),
            "bytes": f.stat().st_size,
        }
        for f in files
    ]
    val_info = (
        [{"path": str(f), "sha256": file_sha256(f), "bytes": f.stat().st_size} for f in source_files(val_source, kind)]
        if val_source is not None
        else []
    )
    tok_info = _tokenizer_info(tokenizer)
    key = {
        "format": FORMAT,
        "source": {"kind": kind, "text_field": text_field, "files": [(f["path"], f["sha256"]) for f in file_info]},
        **({"val_source": [f["sha256"] for f in val_info]} if val_info else {}),
        "tokenizer": tok_info,
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
    }
    fingerprint = _fingerprint(key)
    if _is_up_to_date(out_dir, fingerprint):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
        raise DatasetError(
            f"{out_dir} is not empty and is not a tokenized dataset; refusing to replace it",
            "choose an empty or new out_dir",
        )

    # A first pass counts the documents (and finds malformed records) before anything is written, so
    # the validation documents can be drawn exactly; reading text twice is cheap next to tokenizing it.
    num_docs = sum(1 for _ in iter_documents(source, kind, text_field))
    if num_docs == 0:
        raise DatasetError(f"text source {source} has no documents (it is empty or blank)", "add text to it")
    if val_source is not None:
        num_val = sum(1 for _ in iter_documents(val_source, kind, text_field))
        if num_val == 0:
            raise DatasetError(f"val_source {val_source} has no documents", "add text to it")
        is_val = np.arange(num_docs + num_val) >= num_docs  # the source's documents, then the val_source's
        num_docs += num_val
    else:
        num_val = max(1, round(val_fraction * num_docs)) if val_fraction > 0 else 0
        if num_val >= num_docs:
            raise DatasetError(
                f"text source {source} has {num_docs} document(s); val_fraction={val_fraction} leaves none for training",
                "add documents or pass val_fraction=0",
            )
        is_val = np.zeros(num_docs, dtype=bool)
        is_val[np.random.default_rng(seed).choice(num_docs, size=num_val, replace=False)] = True

    dtype = token_dtype(tok_info["vocab_size"])
    sep = tok_info["separator_id"]
    # When another process published the same dataset meanwhile (jobs of a sweep start together), theirs is
    # kept and ours dropped: replacing it would pull files from under a process already reading them.
    with atomic_path(out_dir, directory=True, keep_existing=lambda path: _is_up_to_date(path, fingerprint)) as tmp:
        writers = {split: _ShardWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
        docs = iter_documents(source, kind, text_field)
        if val_source is not None:
            docs = itertools.chain(docs, iter_documents(val_source, kind, text_field))
        index = 0
        while batch := [doc for _, doc in zip(range(ENCODE_BATCH), docs)]:
            for ids in _encode(tokenizer, batch):
                stream = np.asarray([*ids, sep], dtype=np.int64)
                if stream.max() >= tok_info["vocab_size"]:
                    raise ConfigError(
                        f"tokenizer produced id {stream.max()} >= its size {tok_info['vocab_size']}",
                        "use a tokenizer whose len() covers all its ids",
                    )
                writers["val" if is_val[index] else "train"].add_document(stream)
                index += 1
        manifest = {
            "format": FORMAT,
            "retain_version": retain.__version__,
            "fingerprint": fingerprint,
            "tokenizer": tok_info,
            "dtype": dtype.name,
            "shard_tokens": shard_tokens,
            "source": {"path": str(source), "kind": kind, "text_field": text_field, "files": file_info},
            **({"val_source": {"path": str(val_source), "files": val_info}} if val_source is not None else {}),
            "split_rule": {
                "unit": "document" if val_source is None else "val_source",
                "val_fraction": val_fraction,
                "seed": seed,
                "num_documents": num_docs,
                "num_val_documents": num_val,
                "rule": SPLIT_RULE if val_source is None else "val = every document of val_source",
            },
            "splits": {split: writer.close() for split, writer in writers.items()},
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return out_dir


# --- reading ------------------------------------------------------------------------------------


class TokenDataset:
    """A tokenized folder, opened read-only; checks that the shards on disk are the ones the manifest lists."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DatasetError(f"{manifest_path} does not exist", "tokenize the source with tokenize_source first")
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
            self.dtype = np.dtype(self.manifest["dtype"])
            splits = {split: self.manifest["splits"][split]["shards"] for split in SPLITS}
            totals = {split: int(self.manifest["splits"][split]["num_tokens"]) for split in SPLITS}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"{manifest_path} is damaged ({e!r})", "tokenize the source again") from e
        if self.dtype not in (np.uint16, np.uint32) or self.manifest.get("format") != FORMAT:
            raise DatasetError(f"{manifest_path} is not a {FORMAT} manifest", "tokenize the source again")
        listed = {shard["file"] for shards in splits.values() for shard in shards}
        extra = sorted(p.name for p in self.path.glob("*.bin") if p.name not in listed)
        if extra:
            raise DatasetError(f"{manifest_path} does not list shards {extra}", "tokenize the source again")
        self._files: dict[str, list[Path]] = {}
        self._starts: dict[str, np.ndarray] = {}  # first stream position of each shard, then the total
        self._open: dict[tuple[str, int], Any] = {}  # shard files opened by read()
        for split, shards in splits.items():
            for shard in shards:
                self._check_shard(self.path / shard["file"], int(shard["num_tokens"]))
            sizes = [int(s["num_tokens"]) for s in shards]
            if sum(sizes) != totals[split]:
                raise DatasetError(
                    f"{manifest_path}: {split} shards hold {sum(sizes)} tokens, the manifest says {totals[split]}",
                    "tokenize the source again",
                )
            self._files[split] = [self.path / s["file"] for s in shards]
            self._starts[split] = np.cumsum([0, *sizes])

    def _check_shard(self, file: Path, num_tokens: int) -> None:
        expected = num_tokens * self.dtype.itemsize
        actual = file.stat().st_size if file.is_file() else None
        if actual != expected:
            found = "is missing" if actual is None else f"has {actual} bytes"
            raise DatasetError(
                f"shard {file} {found}; {self.path / MANIFEST} says {num_tokens} {self.dtype.name} tokens ({expected} bytes)",
                "the dataset is truncated or mixed up: tokenize the source again",
            )

    def _handle(self, split: str, shard: int):
        key = (split, shard)
        if key not in self._open:
            self._open[key] = open(self._files[split][shard], "rb")  # noqa: SIM115 (closed with the dataset)
        return self._open[key]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def separator_id(self) -> int:
        return int(self.manifest["tokenizer"]["separator_id"])

    def num_tokens(self, split: str = "train") -> int:
        """Tokens in the split's stream, separators included."""
        return int(self._starts[self._split(split)][-1])

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}", f"use one of {SPLITS}")
        return split

    def read(self, split: str, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the split's stream as int64, across shard boundaries."""
        starts = self._starts[self._split(split)]
        if start < 0 or start + length > starts[-1]:
            raise ValueError(f"{self.path}: [{start}, {start + length}) is outside {split}'s {starts[-1]} tokens")
        out = np.empty(length, dtype=np.int64)
        done = 0
        shard = int(np.searchsorted(starts, start, side="right")) - 1
        while done < length:
            offset = start + done - int(starts[shard])
            take = min(length - done, int(starts[shard + 1]) - int(starts[shard]) - offset)
            # pread on a file kept open: no map whose pages stay resident as the run reads on (memory stays
            # flat), and ~50x cheaper per window than a fresh np.memmap each time.
            size = self.dtype.itemsize
            raw = os.pread(self._handle(split, shard).fileno(), take * size, offset * size)
            out[done : done + take] = np.frombuffer(raw, dtype=self.dtype)
            done += take
            shard += 1
        return out

    def val_batches(
        self, seq_len: int, batch_size: int, max_batches: int | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed validation set: windows of ``seq_len + 1`` tokens at stride ``seq_len`` (each token is a
        target once), spread evenly over the whole val stream when ``max_batches`` caps their number."""
        available = (self.num_tokens("val") - 1) // seq_len
        if available < 1:
            raise DatasetError(
                f"{self.path}: the val split has {self.num_tokens('val')} tokens, fewer than seq_len + 1 = {seq_len + 1}",
                "lower seq_len, or tokenize again with a larger val_fraction",
            )
        count = available if max_batches is None else min(available, max_batches * batch_size)
        starts = (np.arange(count) * available // count) * seq_len
        windows = [self.read("val", int(s), seq_len + 1) for s in starts]
        return [to_inputs_targets(np.stack(windows[i : i + batch_size])) for i in range(0, count, batch_size)]


# --- packing and sampling -----------------------------------------------------------------------


def to_inputs_targets(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Split windows of ``seq_len + 1`` tokens into inputs and next-token targets, both (B, seq_len) int64."""
    windows = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def _replay_count(fraction: Fraction, batch_size: int, step: int) -> int:
    """Replay rows of batch ``step``: floor((step + 1) * f * B) - floor(step * f * B).

    Exactly ``f * B`` rows when that is whole; otherwise floor or ceil, so that after any ``t`` steps the
    replay rows total ``floor(t * f * B)`` -- exact over the run, without any state beyond the step.
    """
    per_batch = fraction * batch_size
    return floor((step + 1) * per_batch) - floor(step * per_batch)


class MixtureSampler:
    """Batches of packed training windows from several datasets, deterministic in (seed, step).

    Replay is compute-equivalent: every batch holds ``batch_size`` windows of ``seq_len + 1`` tokens
    whatever the replay, and ``replay={"upstream": 0.05}`` makes 5% of those rows (see ``_replay_count``)
    windows of ``upstream``, which replace new-data rows in the same token budget rather than being added.
    The other rows draw their source independently from ``weights`` (normalized). The names in ``weights``
    and in ``replay`` are disjoint and together are the names of ``sources``. Each row is a window at a
    uniformly random start in the source's train stream, across document boundaries (with replacement,
    no epochs, as in nanoGPT). The rows' order is shuffled, so replay rows are spread over micro-batches.
    """

    def __init__(
        self,
        sources: dict[str, TokenDataset],
        weights: dict[str, float],
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        replay: dict[str, float] | None = None,
        replay_tokens: dict[str, int] | None = None,
    ):
        replay = dict(replay or {})
        self.replay_tokens = {n: int(t) for n, t in (replay_tokens or {}).items()}
        short = {n: t for n, t in self.replay_tokens.items() if t < seq_len + 1}
        if short or set(self.replay_tokens) - set(replay):
            raise ConfigError(
                f"replay budgets {self.replay_tokens} must be for replayed sources and hold a window ({seq_len + 1} tokens)",
                "raise method.memory_per_task",
            )
        if set(weights) & set(replay) or set(weights) | set(replay) != set(sources):
            raise ConfigError(
                f"mixture names do not match: sources {sorted(sources)}, weights {sorted(weights)}, replay {sorted(replay)}",
                "give every source either a weight (new data) or a replay fraction, not both",
            )
        if seq_len < 1 or batch_size < 1 or seed < 0:
            raise ConfigError(
                f"seq_len={seq_len}, batch_size={batch_size}, seed={seed}", "use positive sizes, seed >= 0"
            )
        total = sum(weights.values())
        if any(not np.isfinite(w) or w < 0 for w in weights.values()) or not total > 0:
            raise ConfigError(f"mixture weights {weights} are not >= 0 with a positive sum", "fix the weights")
        self._fractions = {name: Fraction(f).limit_denominator(10**6) for name, f in replay.items()}
        if any(not 0 <= f < 1 for f in self._fractions.values()) or (
            sum(ceil(f * batch_size) for f in self._fractions.values()) > batch_size
        ):
            raise ConfigError(
                f"replay fractions {replay} do not fit in a batch of {batch_size}",
                "use fractions in [0, 1) whose rows (rounded up) fit in one batch",
            )
        for name, dataset in sources.items():
            if dataset.num_tokens("train") < seq_len + 1:
                raise DatasetError(
                    f"{dataset.path}: source {name!r} has {dataset.num_tokens('train')} train tokens, fewer than seq_len + 1",
                    "lower seq_len or add text to that source",
                )
        self.sources = sources
        self.weights = dict(weights)
        self.replay = replay
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self._new = list(weights)
        self._probs = np.array([weights[n] for n in self._new], dtype=np.float64) / total
        self.step = 0

    def plan(self, step: int) -> list[tuple[str, int]]:
        """(source, start) of each row of batch ``step``; computed from (seed, step) alone, reads nothing."""
        rng = np.random.default_rng([self.seed, step])
        names = [name for name, f in self._fractions.items() for _ in range(_replay_count(f, self.batch_size, step))]
        picks = rng.choice(len(self._new), size=self.batch_size - len(names), p=self._probs)
        names += [self._new[i] for i in picks]
        names = [names[i] for i in rng.permutation(self.batch_size)]
        # a window [start, start + seq_len + 1) inside the stream, or inside the kept first tokens of a budget
        highs = np.array(
            [min(self.sources[n].num_tokens("train"), self.replay_tokens.get(n, 1 << 62)) - self.seq_len for n in names]
        )
        starts = rng.integers(0, highs)
        return [(name, int(start)) for name, start in zip(names, starts)]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` as (inputs, targets) int64 tensors of shape (batch_size, seq_len)."""
        windows = [self.sources[name].read("train", start, self.seq_len + 1) for name, start in self.plan(step)]
        return to_inputs_targets(np.stack(windows))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at the current step, then advance the step."""
        out = self.batch(self.step)
        self.step += 1
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def _config(self) -> dict:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "weights": self.weights,
            "replay": self.replay,
            **({"replay_tokens": self.replay_tokens} if self.replay_tokens else {}),
            "train_tokens": {name: ds.num_tokens("train") for name, ds in self.sources.items()},
        }

    def state_dict(self) -> dict:
        """The step, plus the config it is only meaningful with (checked on load)."""
        return {"step": self.step, **self._config()}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state["step"]``: nothing is read or replayed, the next batch is simply that step's."""
        mine = self._config()
        changed = sorted(k for k in mine if k in state and state[k] != mine[k])
        if changed:
            raise ConfigError(
                f"the sampler state was saved with a different {', '.join(changed)}",
                "resume with the config and datasets the run started with",
            )
        self.step = int(state["step"])

    def val_batches(
        self, name: str, seq_len: int | None = None, batch_size: int | None = None, max_batches: int | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches of source ``name`` (see ``TokenDataset.val_batches``)."""
        if name not in self.sources:
            raise ConfigError(f"no source named {name!r}", f"use one of {sorted(self.sources)}")
        return self.sources[name].val_batches(seq_len or self.seq_len, batch_size or self.batch_size, max_batches)
