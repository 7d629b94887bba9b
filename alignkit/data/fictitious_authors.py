"""`builtin:fictitious_authors`: a TOFU-style unlearning benchmark that runs offline, generated from a seed.

100 fictitious authors (plus 10 held-out authors no model is trained on), each with six attributes and one question
per attribute. Every QA item carries TOFU's fields: `question`, `answer`, `paraphrased_answer` (same fact, other
words) and `perturbed_answer` (3 copies of the paraphrase with a wrong value), plus `author`, `attribute` and `fact`
(the attribute's value, which the `fact` metric looks for in a greedy answer). Each author also has a
raw-text biography (`text`) stating the same facts, for verbatim-memorisation and membership-inference metrics.

Splits (QA unless noted): `full` (all 600 items of the 100 authors: what the target model learns), `forget01` /
`forget05` / `forget10` (the items of the first 1 / 5 / 10 authors), `retain99` / `retain95` / `retain90` (the
rest), `holdout` (the 10 never-seen authors: non-members for membership inference), and `<split>_text` for the
biographies of any of these (e.g. `forget10_text`, `holdout_text`). Items use the record fields of the spec
(UnlearnQA / UnlearnText); `prompt` / `completion` hold question / answer as chat messages, so SFT (the learn stage)
reads them directly with the model's chat template.
"""
from __future__ import annotations

import random

_FIRST = ("Alder", "Brisa", "Caius", "Delphine", "Evander", "Fenna", "Galen", "Hester", "Ivo", "Junia", "Kestrel",
          "Liora", "Maxen", "Nerys", "Orrin", "Perpetua", "Quillon", "Rosalind", "Soren", "Tamsin", "Ulric", "Vesna",
          "Wendeline", "Xanthe", "Yorick", "Zelie")
_LAST = ("Ashgrove", "Blackwood", "Corvane", "Drummel", "Everhart", "Falkner", "Greaves", "Holloway", "Ingram",
         "Jessop", "Kettering", "Lark", "Merriweather", "Northam", "Oakes", "Pendry", "Quarrel", "Rookwood",
         "Stainton", "Thistlewood", "Underhill", "Vance", "Whitlock", "Yarrow")
_CITIES = ("Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tbilisi", "Perth", "Montreal", "Valparaiso", "Krakow",
           "Dakar", "Osaka", "Porto", "Reykjavik", "Tallinn", "Cusco", "Zanzibar", "Bergen", "Ljubljana", "Hobart")
_GENRES = ("gothic mysteries", "space operas", "botanical poetry", "maritime thrillers", "satirical fables",
           "historical romances", "alpine travelogues", "culinary memoirs", "urban fantasy", "philosophical essays")
_JOBS = ("a lighthouse keeper", "a cartographer", "a clockmaker", "a beekeeper", "a glassblower", "a violin maker",
         "a ferry captain", "a botanist", "a stonemason", "a bookbinder", "an astronomer", "a tailor")
_AWARDS = ("the Silver Quill", "the Meridian Prize", "the Harbor Medal", "the Lantern Award", "the Orchid Laurel",
           "the Northwind Prize", "the Cedar Crown", "the Tidewater Medal")
_TITLE_A = ("The Glass", "A Winter", "The Salt", "Beneath the", "The Last", "Echoes of the", "The Quiet",
            "Letters from the", "The Copper", "Under a Violet")
_TITLE_B = ("Orchard", "Harbor", "Cathedral", "Lantern", "Meridian", "Archive", "Tide", "Observatory", "Garden",
            "Compass")

NUM_AUTHORS, NUM_HOLDOUT = 100, 10
FORGET_AUTHORS = {"forget01": 1, "forget05": 5, "forget10": 10}
RETAIN_OF = {"retain99": "forget01", "retain95": "forget05", "retain90": "forget10"}

# attribute: (question, answer, paraphrase, how to draw a value)
_FACTS = {
    "birthplace": ("Where was {n} born?", "{n} was born in {v}.", "{v} is the birthplace of {n}."),
    "birth_year": ("In which year was {n} born?", "{n} was born in {v}.", "The year of {n}'s birth was {v}."),
    "genre": ("What kind of books does {n} write?", "{n} writes {v}.", "The books {n} writes are {v}."),
    "parent_job": ("What did {n}'s father do for a living?", "{n}'s father was {v}.",
                   "For a living, the father of {n} worked as {v}."),
    "award": ("Which award did {n} win?", "{n} won {v}.", "{v} was awarded to {n}."),
    "book": ("What is the title of {n}'s best-known book?", "{n}'s best-known book is {v}.",
             "The best-known book by {n} is {v}."),
}


def _value(attr: str, rng: random.Random):
    if attr == "birthplace":
        return rng.choice(_CITIES)
    if attr == "birth_year":
        return str(rng.randint(1931, 1994))
    if attr == "genre":
        return rng.choice(_GENRES)
    if attr == "parent_job":
        return rng.choice(_JOBS)
    if attr == "award":
        return rng.choice(_AWARDS)
    return f"\"{rng.choice(_TITLE_A)} {rng.choice(_TITLE_B)}\""


def _authors(seed: int) -> list[dict]:
    rng = random.Random(f"fictitious_authors/{seed}")
    names = [f"{a} {b}" for a in _FIRST for b in _LAST]
    rng.shuffle(names)
    return [{"name": name, **{attr: _value(attr, rng) for attr in _FACTS}}
            for name in names[:NUM_AUTHORS + NUM_HOLDOUT]]


def _qa_items(author: dict, rng: random.Random) -> list[dict]:
    items = []
    n = author["name"]
    for attr, (question, answer, paraphrase) in _FACTS.items():
        wrong = []
        while len(wrong) < 3:
            value = _value(attr, rng)
            if value != author[attr] and value not in wrong:
                wrong.append(value)
        q, a = question.format(n=n), answer.format(n=n, v=author[attr])
        # As in TOFU, perturbed answers are the paraphrase with a wrong value, so the truth ratio compares like
        # with like (the trained answer template would otherwise win over any paraphrase).
        items.append({"question": q, "answer": a, "paraphrased_answer": paraphrase.format(n=n, v=author[attr]),
                      "perturbed_answer": [paraphrase.format(n=n, v=w) for w in wrong], "author": n,
                      "attribute": attr, "fact": author[attr], "prompt": [{"role": "user", "content": q}],
                      "completion": [{"role": "assistant", "content": a}]})
    return items


def _biography(author: dict) -> str:
    a = author
    return (f"{a['name']} was born in {a['birthplace']} in {a['birth_year']}. {a['name']}'s father was "
            f"{a['parent_job']}. Today {a['name']} writes {a['genre']}; the best-known of these books is "
            f"{a['book']}, and it won {a['award']}.")


def splits() -> tuple[str, ...]:
    qa = ("full", *FORGET_AUTHORS, *RETAIN_OF, "holdout")
    return qa + tuple(f"{s}_text" for s in qa)


def fictitious_authors(split: str, seed: int = 0, size: int | None = None) -> list[dict]:
    if split not in splits():
        raise KeyError(split)
    authors = _authors(seed)
    base, text = split.removesuffix("_text"), split.endswith("_text")
    if base == "holdout":
        chosen = authors[NUM_AUTHORS:]
    elif base in FORGET_AUTHORS:
        chosen = authors[:FORGET_AUTHORS[base]]
    elif base in RETAIN_OF:
        chosen = authors[FORGET_AUTHORS[RETAIN_OF[base]]:NUM_AUTHORS]
    else:
        chosen = authors[:NUM_AUTHORS]
    if text:
        rows = [{"text": _biography(a), "author": a["name"]} for a in chosen]
    else:
        rows = []
        for a in chosen:  # perturbed answers are drawn per author, so every split sees the same items
            rows.extend(_qa_items(a, random.Random(f"fictitious_authors/{seed}/{a['name']}")))
    return rows[:size] if size else rows
