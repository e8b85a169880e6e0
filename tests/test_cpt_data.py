"""The tokenize-once data layer of LLM continual pretraining (`pretrain/cpt/data.py`).

A tiny byte-level BPE tokenizer is trained offline on generated sentences, saved and reloaded. Each
source kind round-trips through the shards; the manifest, the no-op re-run, the document-level val
split, packing, the mixture and replay, stateless resume and the malformed cases are checked on small
generated corpora. Parquet and `datasets` sources are skipped when pyarrow/datasets are not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import retain
from pretrain.cpt import data
from pretrain.cpt.data import MixtureSampler, TokenDataset, token_dtype, tokenize_source
from retain.errors import ConfigError, DatasetError

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "far", "river", "quick", "fox", "lazy", "night", "é", "ü"]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAS_DATASETS = importlib.util.find_spec("datasets") is not None


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Documents of one to three lines (no blank lines inside, so the text-file rule keeps them whole)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + rng.choice([".", "!", ""]) for _ in range(3)]
        docs.append(f"doc {i}: " + "\n".join(lines[: rng.randint(1, 3)]))
    return docs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A byte-level BPE (lossless round trip) with an EOS token, saved and loaded like a pretrained one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(make_docs(300, seed=99), trainer)
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|eos|>", clean_up_tokenization_spaces=False
    ).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def big_tokenizer():
    """A word-level tokenizer with more than 65536 ids, so its shards need uint32."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="[UNK]")


def write_source(kind: str, folder: Path, docs: list[str]) -> Path:
    """Write ``docs`` as a source of ``kind`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path = folder / "corpus.txt"
        # one, two or a whitespace-only line between documents: all are blank lines
        seps = ["\n\n", "\n\n\n", "\n   \n"]
        path.write_text("".join(doc + seps[i % 3] for i, doc in enumerate(docs)))
        return path
    if kind == "text_dir":
        path = folder / "docs"
        path.mkdir()
        for i, doc in enumerate(docs):
            (path / f"{i:04d}.txt").write_text(doc)
        return path
    if kind == "jsonl":
        path = folder / "corpus.jsonl"
        path.write_text("".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(docs)))
        return path
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "corpus.parquet"
        pq.write_table(pa.table({"text": docs}), path)
        return path
    if kind == "hf":
        import datasets

        path = folder / "hf"
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(path))
        return path
    raise AssertionError(kind)


def split_docs(ds: TokenDataset, split: str, tokenizer) -> list[str]:
    """Decode a split's stream back into its documents (cut at the separator)."""
    ids = ds.read(split, 0, ds.num_tokens(split)).tolist()
    assert ids[-1] == ds.separator_id  # every document, the last included, ends with the separator
    docs, current = [], []
    for i in ids:
        if i == ds.separator_id:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    return docs


def file_state(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


# --- tokenizing -----------------------------------------------------------------------------------

KINDS = [
    "text",
    "text_dir",
    "jsonl",
    pytest.param("parquet", marks=pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")),
    pytest.param("hf", marks=pytest.mark.skipif(not HAS_DATASETS, reason="datasets is not installed")),
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_source_kind_round_trips(kind, tokenizer, tmp_path):
    docs = make_docs(40)
    source = write_source(kind, tmp_path / "src", docs)
    assert data.detect_kind(source) == kind
    ds = TokenDataset(tokenize_source(source, tokenizer, tmp_path / "tok", val_fraction=0.1, seed=3))
    val, train = split_docs(ds, "val", tokenizer), split_docs(ds, "train", tokenizer)
    assert len(val) == 4 and len(train) == 36
    # whole documents, each exactly as written, none lost or duplicated
    assert set(val) <= set(docs)
    assert sorted(val + train) == sorted(docs)
    assert ds.manifest["source"]["kind"] == kind


def test_dtype_follows_vocab_size(tokenizer, big_tokenizer, tmp_path):
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    small = TokenDataset(tokenize_source(write_source("text", tmp_path / "a", make_docs(5)), tokenizer, tmp_path / "s"))
    assert small.dtype == np.uint16
    words = ["w0 w69999 w65535", "w65536 w3", "w1 w2"]
    big = TokenDataset(tokenize_source(write_source("text", tmp_path / "b", words), big_tokenizer, tmp_path / "b16"))
    assert big.dtype == np.uint32 and big.manifest["dtype"] == "uint32"
    shard = tmp_path / "b16" / big.manifest["splits"]["train"]["shards"][0]["file"]
    assert shard.stat().st_size == 4 * big.manifest["splits"]["train"]["shards"][0]["num_tokens"]
    ids = big.read("train", 0, big.num_tokens("train")).tolist()
    assert 70_001 in ids and 65_538 in ids  # ids above 65535 survive the round trip


def test_manifest_records_what_was_done(tokenizer, tmp_path):
    source = write_source("text_dir", tmp_path / "src", make_docs(30))
    out = tokenize_source(source, tokenizer, tmp_path / "tok", val_fraction=0.1, shard_tokens=100, seed=5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["retain_version"] == retain.__version__
    assert manifest["tokenizer"]["name_or_path"] == tokenizer.name_or_path
    assert manifest["tokenizer"]["vocab_size"] == len(tokenizer)
    assert manifest["tokenizer"]["separator_id"] == tokenizer.eos_token_id
    assert manifest["dtype"] == "uint16"
    files = manifest["source"]["files"]
    assert manifest["source"]["path"] == str(source.resolve()) and len(files) == 30
    assert files[0]["sha256"] == hashlib.sha256((source / files[0]["path"]).read_bytes()).hexdigest()
    rule = manifest["split_rule"]
    assert (rule["unit"], rule["val_fraction"], rule["seed"], rule["num_val_documents"]) == ("document", 0.1, 5, 3)
    for split in ("train", "val"):
        shards = manifest["splits"][split]["shards"]
        assert all(s["num_tokens"] <= 100 for s in shards) and shards[0]["file"] == f"{split}_000000.bin"
        assert sum(s["num_tokens"] for s in shards) == manifest["splits"][split]["num_tokens"]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".bin") == sorted(
        s["file"] for split in ("train", "val") for s in manifest["splits"][split]["shards"]
    )


def test_rerun_is_a_noop_and_a_changed_source_retokenizes(tokenizer, tmp_path):
    docs = make_docs(20)
    source = write_source("jsonl", tmp_path / "src", docs)
    out = tokenize_source(source, tokenizer, tmp_path / "tok")
    before = file_state(out)
    assert tokenize_source(source, tokenizer, tmp_path / "tok") == out
    assert file_state(out) == before
    # no temporary folders are left next to the dataset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tok"]

    write_source("jsonl", tmp_path / "src", [*docs, "a brand new document."])
    tokenize_source(source, tokenizer, tmp_path / "tok")
    ds = TokenDataset(out)
    assert ds.manifest["split_rule"]["num_documents"] == 21
    assert "a brand new document." in split_docs(ds, "train", tokenizer) + split_docs(ds, "val", tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tok"]


def test_val_split_is_whole_documents_and_deterministic(tokenizer, tmp_path):
    source = write_source("text", tmp_path / "src", make_docs(60))

    def val_docs(seed: int, out: str) -> list[str]:
        ds = TokenDataset(tokenize_source(source, tokenizer, tmp_path / out, val_fraction=0.1, seed=seed))
        return split_docs(ds, "val", tokenizer)

    first, again, other = val_docs(1, "a"), val_docs(1, "b"), val_docs(2, "c")
    assert first == again and len(first) == 6
    assert set(first) != set(other)


def test_a_failed_run_leaves_the_old_dataset_and_no_temporary_folder(tokenizer, tmp_path, monkeypatch):
    source = write_source("text", tmp_path / "src", make_docs(20))
    out = tokenize_source(source, tokenizer, tmp_path / "tok")
    before = file_state(out)
    write_source("text", tmp_path / "src", make_docs(25))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_encode", crash)
    with pytest.raises(KeyboardInterrupt):
        tokenize_source(source, tokenizer, out)
    assert file_state(out) == before and TokenDataset(out).manifest["split_rule"]["num_documents"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tok"]


# --- packing and sampling -------------------------------------------------------------------------


@pytest.fixture
def corpora(tokenizer, tmp_path) -> dict[str, TokenDataset]:
    """Three small datasets with many shards, so that windows cross shard boundaries."""
    out = {}
    for i, name in enumerate(["new", "other", "upstream"]):
        source = write_source("text", tmp_path / f"src_{name}", make_docs(40, seed=i))
        out[name] = TokenDataset(tokenize_source(source, tokenizer, tmp_path / name, val_fraction=0.2, shard_tokens=64))
    return out


def test_packed_windows_cross_documents_and_shards(corpora):
    ds = corpora["new"]
    stream = np.concatenate([np.fromfile(f, dtype=ds.dtype) for f in ds._files["train"]]).astype(np.int64)
    assert len(stream) == ds.num_tokens("train") and len(ds._files["train"]) > 5
    np.testing.assert_array_equal(ds.read("train", 60, 10), stream[60:70])  # 64 is a shard boundary

    sampler = MixtureSampler({"new": ds}, {"new": 1.0}, seq_len=32, batch_size=8, seed=0)
    inputs, targets = sampler.next_batch()
    assert inputs.shape == targets.shape == (8, 32) and inputs.dtype == targets.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
    for row, (_, start) in enumerate(sampler.plan(0)):
        window = torch.from_numpy(stream[start : start + 33])
        assert torch.equal(inputs[row], window[:-1]) and torch.equal(targets[row], window[1:])
    assert (inputs == ds.separator_id).any()  # documents are packed across their boundaries


def test_mixture_weights_are_respected(corpora):
    sampler = MixtureSampler(
        {"new": corpora["new"], "other": corpora["other"]}, {"new": 3.0, "other": 1.0}, seq_len=16, batch_size=16
    )
    counts = Counter(name for step in range(400) for name, _ in sampler.plan(step))
    assert abs(counts["new"] / 6400 - 0.75) < 0.02


def test_replay_is_an_exact_share_of_every_batch(corpora):
    sampler = MixtureSampler(
        corpora, {"new": 1.0, "other": 1.0}, seq_len=16, batch_size=20, seed=1, replay={"upstream": 0.05}
    )
    for step in range(100):
        names = [name for name, _ in sampler.plan(step)]
        assert len(names) == 20 and names.count("upstream") == 1
    # the replay row moves around the batch, so every micro-batch of an accumulated step can hold one
    assert len({[name for name, _ in sampler.plan(step)].index("upstream") for step in range(100)}) > 5
    inputs, _ = sampler.batch(0)
    assert inputs.shape == (20, 16)  # replay replaces rows: the token budget per batch is unchanged

    # 0.05 of 8 rows is 0.4 per batch: after t batches exactly floor(0.4 t) replay rows
    sampler = MixtureSampler(corpora, {"new": 1.0, "other": 0.0}, seq_len=16, batch_size=8, replay={"upstream": 0.05})
    per_step = [sum(name == "upstream" for name, _ in sampler.plan(step)) for step in range(50)]
    assert set(per_step) == {0, 1} and all(sum(per_step[:t]) == (2 * t) // 5 for t in range(51))
    assert not any(name == "other" for step in range(50) for name, _ in sampler.plan(step))  # weight 0


def test_a_replay_budget_keeps_the_windows_inside_the_kept_tokens(corpora):
    """method=replay method.memory_per_task=64: replayed windows come from the source's first 64 train tokens."""
    sampler = MixtureSampler(
        corpora, {"new": 1.0, "other": 1.0}, 16, 20, seed=1, replay={"upstream": 0.25}, replay_tokens={"upstream": 64}
    )
    starts = [start for step in range(50) for name, start in sampler.plan(step) if name == "upstream"]
    assert len(starts) == 250 and max(starts) + 17 <= 64 and len(set(starts)) > 20
    others = [start for step in range(50) for name, start in sampler.plan(step) if name == "new"]
    assert max(others) > 64  # the new data is not budgeted
    with pytest.raises(ConfigError, match="budget"):
        MixtureSampler(
            corpora, {"new": 1.0, "other": 1.0}, 16, 20, replay={"upstream": 0.25}, replay_tokens={"upstream": 10}
        )


def test_resume_at_step_n_reads_only_batch_n(corpora, tokenizer, tmp_path):
    weights, replay = {"new": 2.0, "other": 1.0}, {"upstream": 0.25}
    uninterrupted = MixtureSampler(corpora, weights, seq_len=16, batch_size=8, seed=7, replay=replay)
    batches = [b for _, b in zip(range(6), uninterrupted)]
    state = json.loads(json.dumps(uninterrupted.state_dict()))  # it survives a JSON checkpoint
    assert state["step"] == 6
    expected = uninterrupted.next_batch()

    reads: list[tuple[str, int]] = []
    fresh = {name: TokenDataset(ds.path) for name, ds in corpora.items()}
    for name, ds in fresh.items():
        read = ds.read
        ds.read = lambda split, start, length, name=name, read=read: (
            reads.append((name, start)) or read(split, start, length)
        )
    resumed = MixtureSampler(fresh, weights, seq_len=16, batch_size=8, seed=7, replay=replay)
    resumed.load_state_dict(state)
    assert reads == []  # loading the state reads nothing
    inputs, targets = resumed.next_batch()
    assert torch.equal(inputs, expected[0]) and torch.equal(targets, expected[1])
    assert reads == resumed.plan(6)  # exactly batch 6's windows, none of batches 0-5
    assert not torch.equal(batches[0][0], expected[0])

    with pytest.raises(ConfigError, match="seed"):
        MixtureSampler(fresh, weights, seq_len=16, batch_size=8, seed=8, replay=replay).load_state_dict(state)


def test_val_batches_are_fixed(corpora):
    sampler = MixtureSampler(corpora, {"new": 1.0, "other": 1.0}, seq_len=16, batch_size=4, replay={"upstream": 0.25})
    first = sampler.val_batches("upstream", max_batches=3)
    again = MixtureSampler({"upstream": corpora["upstream"]}, {"upstream": 1.0}, 16, 4, seed=9).val_batches(
        "upstream", max_batches=3
    )
    assert len(first) == 3 and all(x.shape == (4, 16) for x, _ in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    every = corpora["upstream"].val_batches(seq_len=16, batch_size=4)
    n = corpora["upstream"].num_tokens("val")
    assert sum(len(x) for x, _ in every) == (n - 1) // 16  # stride seq_len: every token a target once
    assert torch.equal(every[0][1][0, -1], every[0][0][1, 0])


def test_bad_mixture_configs(corpora):
    with pytest.raises(ConfigError, match="names"):
        MixtureSampler(corpora, {"new": 1.0}, seq_len=16, batch_size=4)
    with pytest.raises(ConfigError, match="replay"):
        MixtureSampler(corpora, {"new": 1.0, "other": 1.0}, 16, 4, replay={"upstream": 1.0})
    with pytest.raises(DatasetError, match="seq_len"):
        MixtureSampler({"new": corpora["new"]}, {"new": 1.0}, seq_len=10**6, batch_size=4)


# --- malformed data -------------------------------------------------------------------------------


def test_missing_and_empty_sources_name_the_file(tokenizer, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DatasetError, match="nope.txt"):
        tokenize_source(missing, tokenizer, tmp_path / "tok")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt.*no documents"):
        tokenize_source(empty, tokenizer, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_jsonl_line_without_text_names_file_and_line(tokenizer, tmp_path):
    source = tmp_path / "c.jsonl"
    source.write_text('{"text": "one"}\n\n{"text": "two"}\n{"body": "three"}\n')
    with pytest.raises(DatasetError, match=r"c\.jsonl:4 has no string field 'text'") as err:
        tokenize_source(source, tokenizer, tmp_path / "tok")
    assert "text_field" in err.value.fix
    assert not (tmp_path / "tok").exists()


def test_truncated_shard_is_refused(tokenizer, tmp_path):
    out = tokenize_source(write_source("text", tmp_path / "src", make_docs(20)), tokenizer, tmp_path / "tok")
    shard = out / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DatasetError, match=r"train_000000\.bin has \d+ bytes"):
        TokenDataset(out)


def test_manifest_that_does_not_match_the_shards_is_refused(tokenizer, tmp_path):
    out = tokenize_source(write_source("text", tmp_path / "src", make_docs(20)), tokenizer, tmp_path / "tok")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["num_tokens"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"manifest\.json: train shards hold"):
        TokenDataset(out)
    manifest["splits"]["train"]["num_tokens"] -= 1
    manifest["splits"]["val"]["shards"] = []
    manifest["splits"]["val"]["num_tokens"] = 0
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"manifest\.json does not list shards \['val_000000\.bin'\]"):
        TokenDataset(out)
    (out / "manifest.json").unlink()
    with pytest.raises(DatasetError, match=r"manifest\.json does not exist"):
        TokenDataset(out)


def test_a_folder_that_is_not_a_dataset_is_not_replaced(tokenizer, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing"):
        tokenize_source(write_source("text", tmp_path / "src", make_docs(5)), tokenizer, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_datasetdict_folder_points_at_its_splits(tokenizer, tmp_path):
    folder = tmp_path / "dd"
    (folder / "train").mkdir(parents=True)
    (folder / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DatasetError, match="DatasetDict") as err:
        tokenize_source(folder, tokenizer, tmp_path / "tok")
    assert str(folder / "train") in err.value.fix


@pytest.mark.skipif(HAS_PYARROW, reason="checks the message shown when pyarrow is not installed")
def test_parquet_without_pyarrow_says_what_to_install(tokenizer, tmp_path):
    source = tmp_path / "c.parquet"
    source.write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match=r"c\.parquet needs pyarrow.*pip install pyarrow"):
        tokenize_source(source, tokenizer, tmp_path / "tok")


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_parquet_without_the_text_column_names_file_and_columns(tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["one", "two"]}), source)
    with pytest.raises(DatasetError, match=r"c\.parquet has no column 'text' \(columns: \['body'\]\)"):
        tokenize_source(source, tokenizer, tmp_path / "tok")
    out = tokenize_source(source, tokenizer, tmp_path / "tok", val_fraction=0.5, text_field="body")
    assert TokenDataset(out).manifest["source"]["text_field"] == "body"


# --- a validation split of its own (val_source) ----------------------------------------------------


def test_val_source_is_the_whole_validation_split_and_nothing_of_it_trains(tokenizer, tmp_path):
    train_docs, val_docs = make_docs(30, seed=1), [f"held out {d}" for d in make_docs(7, seed=2)]
    train_file = write_source("text", tmp_path / "train", train_docs)
    val_file = write_source("text", tmp_path / "val", val_docs)
    out = tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0, val_source=val_file)
    ds = TokenDataset(out)
    # every document of each file, in order, on its own side
    assert split_docs(ds, "train", tokenizer) == train_docs
    assert split_docs(ds, "val", tokenizer) == val_docs
    rule = ds.manifest["split_rule"]
    assert rule["unit"] == "val_source"
    assert (rule["num_documents"], rule["num_val_documents"]) == (37, 7)
    assert ds.manifest["val_source"]["path"] == str(val_file.resolve())
    assert ds.manifest["val_source"]["files"][0]["sha256"] == hashlib.sha256(val_file.read_bytes()).hexdigest()
    assert ds.manifest["splits"]["val"]["num_documents"] == 7


def test_val_source_with_a_val_fraction_or_of_another_kind_is_refused(tokenizer, tmp_path):
    train_file = write_source("text", tmp_path / "train", make_docs(10, seed=1))
    val_file = write_source("text", tmp_path / "val", make_docs(3, seed=2))
    with pytest.raises(ConfigError, match="val_fraction"):
        tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0.1, val_source=val_file)
    val_jsonl = write_source("jsonl", tmp_path / "val_jsonl", make_docs(3, seed=2))
    with pytest.raises(DatasetError, match="val_source"):
        tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0, val_source=val_jsonl)
    empty = tmp_path / "empty" / "val.txt"
    empty.parent.mkdir()
    empty.write_text("\n \n")
    with pytest.raises(DatasetError, match="no documents"):
        tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0, val_source=empty)
    assert not (tmp_path / "tok").exists()  # nothing was written by any refused call


def test_a_changed_val_source_retokenizes_and_an_unchanged_one_does_not(tokenizer, tmp_path):
    train_file = write_source("text", tmp_path / "train", make_docs(20, seed=1))
    val_file = write_source("text", tmp_path / "val", make_docs(4, seed=2))
    out = tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0, val_source=val_file)
    first, before = TokenDataset(out).manifest["fingerprint"], file_state(out)
    tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0, val_source=val_file)
    assert file_state(out) == before  # the same bytes: nothing is written

    write_source("text", tmp_path / "val", [*make_docs(4, seed=2), "one more held-out document."])
    tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0, val_source=val_file)
    ds = TokenDataset(out)
    assert ds.manifest["fingerprint"] != first
    assert split_docs(ds, "val", tokenizer)[-1] == "one more held-out document."
    # the same training file split by val_fraction instead is yet another dataset
    tokenize_source(train_file, tokenizer, tmp_path / "tok", val_fraction=0.1)
    assert TokenDataset(out).manifest["fingerprint"] not in (first, ds.manifest["fingerprint"])
    assert TokenDataset(out).manifest["split_rule"]["unit"] == "document"
