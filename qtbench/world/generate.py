"""The synthetic default world: entities, pretraining corpus, SFT data with
planted quality problems, and five held-out lm-eval tasks -- all from one seed.

Why it exists: qtbench's default run must work offline on a laptop, and the
EU-plane analysis needs data whose quality is *known*.  So instead of
downloading a base model and benchmarks we build a small fictional world in
which

* a ~1M-parameter model pretrained on ``corpus.txt`` knows the covered facts
  (about two thirds) and not the rest, so "easy/redundant" versus "new
  knowledge" SFT items differ in perplexity for a reason we control;
* every SFT record carries ground truth in ``sft_meta.jsonl`` (task family,
  injected noise, duplicate-of), which the model never sees;
* the five ``world_*`` lm-eval tasks mirror the formats of ARC-Easy/Challenge,
  GSM8K, SQuAD and TriviaQA, and render their prompts exactly as training
  renders an SFT record of the same family (qtbench's plain template: the
  instruction, ``"\\n\\n" + input`` if any, then ``"\\nAnswer:"``; the response
  is ``" " + output``).

Determinism: everything is drawn from one ``random.Random(seed)`` in a fixed
order; no set or dict iteration order is ever used to order output, and JSON is
written with sorted keys, so the same config gives byte-identical files (except
the absolute data paths in the task YAMLs, which name ``out_dir``).

Held-out evaluation: every prompt is *claimed* in one registry when it is
created; a prompt used by an evaluation item is never reused by an SFT or a
reference record (facts may recur under another phrasing), and the corpus has
no question/answer records (see ``_build_corpus`` for the prose questions it
does contain, in wordings disjoint from every SFT/eval question).

Calibration: the world's knobs (corpus, coverage, model size, noise mix, eval
sizes, and the training regime of the default config) are set by what the
ground-truth controls (``oracle``, ``anti_oracle``), ``random+random`` and
``full`` show (``benchmarks/calibrate_world.py``: random recovering part of full
data's gain, the planted noise doing harm, selection at a budget mattering) -
never by Q-Tuning's or any baseline's score, which are results on the world,
not targets for it.

Answers: fact and two-hop outputs are the bare answer closed by a period
("Tamsin."), math outputs a one-line worked answer ending ``#### N``, reading
outputs a span of the passage.  Multiple-choice tasks score the bare answer
strings; generative tasks ignore the period (punctuation-insensitive match).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtbench.data.template import prompt_text
from qtbench.world.labels import NOISE_TYPES

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # entities
    "n_countries": 200,
    "n_people": 40,
    "n_languages": 24,
    "n_currencies": 30,
    # pretraining corpus
    "corpus_coverage": 0.67,  # fraction of facts (and arithmetic triples) stated in corpus.txt
    "corpus_phrasings": 3,  # declarative phrasings written per covered fact
    "arith_max": 30,  # operands of the arithmetic world are in [2, arith_max]
    # SFT / reference / eval sizes
    "n_sft": 3000,
    "n_reference": 300,
    "n_eval_per_task": 200,
    # planted problems, as fractions of n_sft (exact counts: round(rate * n_sft))
    "noise": {"random": 0.10, "wrong_answer": 0.10, "truncated": 0.05, "refusal": 0.0},
    "duplicate_rate": 0.15,
    # mix of the non-duplicate SFT records; fact families are capped by the
    # number of facts available and the remainder goes to math/reading
    "family_weights": {
        "fact_covered": 0.22,
        "fact_uncovered": 0.11,
        "two_hop": 0.12,
        "math": 0.30,
        "reading": 0.25,
    },
}

FAMILIES = ("fact_covered", "fact_uncovered", "two_hop", "math", "reading")
TASKS = ("world_arc_easy", "world_arc_challenge", "world_gsm8k", "world_squad", "world_triviaqa")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
DATA_DIR_PLACEHOLDER = "__DATA_DIR__"
READING_INSTRUCTION = "Read the passage and answer the question."


def resolve_config(cfg: dict | None) -> dict:
    """``DEFAULTS`` merged with ``cfg`` (nested dicts key by key).

    Unknown keys raise ``ValueError`` naming the key, so a typo in a config
    file fails loudly instead of silently using a default.
    """
    cfg = dict(cfg or {})
    out = copy.deepcopy(DEFAULTS)
    for key, value in cfg.items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown world config key: {key!r} (known: {', '.join(sorted(DEFAULTS))})")
        if isinstance(DEFAULTS[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"world config key {key!r} must be a mapping")
            for sub, subvalue in value.items():
                if sub not in DEFAULTS[key]:
                    raise ValueError(
                        f"unknown world config key: '{key}.{sub}' (known: {', '.join(sorted(DEFAULTS[key]))})"
                    )
                out[key][sub] = float(subvalue)
        else:
            out[key] = value
    for key in ("seed", "n_countries", "n_people", "n_languages", "n_currencies", "corpus_phrasings",
                "arith_max", "n_sft", "n_reference", "n_eval_per_task"):
        if int(out[key]) != out[key] or out[key] < 0:
            raise ValueError(f"world config key {key!r} must be a non-negative integer, got {out[key]!r}")
        out[key] = int(out[key])
    if out["n_countries"] < 8 or out["n_people"] < 4 or out["n_languages"] < 4 or out["n_currencies"] < 4:
        raise ValueError("the world needs at least 8 countries, 4 people, 4 languages and 4 currencies")
    if out["arith_max"] < 6:
        raise ValueError("world config key 'arith_max' must be at least 6")
    for key in ("corpus_coverage", "duplicate_rate"):
        out[key] = float(out[key])
        if not 0.0 <= out[key] <= 1.0:
            raise ValueError(f"world config key {key!r} must be in [0, 1]")
    if sum(out["noise"].values()) + out["duplicate_rate"] > 0.9:
        raise ValueError("noise rates plus duplicate_rate must leave at least 10% of the SFT set clean")
    if any(v < 0 for v in out["noise"].values()) or any(v < 0 for v in out["family_weights"].values()):
        raise ValueError("noise rates and family weights must be non-negative")
    if sum(out["family_weights"].values()) <= 0:
        raise ValueError("family_weights must not all be zero")
    return out


# ---------------------------------------------------------------------------
# Vocabulary: names from a syllable generator, small closed pools
# ---------------------------------------------------------------------------

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "th", "br", "dr", "kr", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "o", "e"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "k"]

PROFESSIONS = [
    "baker", "pilot", "farmer", "teacher", "doctor", "painter", "sailor", "miner",
    "weaver", "potter", "singer", "judge", "builder", "fisher", "tailor", "poet",
]
FIRST_NAMES = [
    "Ana", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jon", "Kim", "Leo",
    "Mia", "Ned", "Ola", "Pim", "Rosa", "Sam", "Tia", "Uma", "Vic", "Wes", "Yara", "Zoe",
]
OBJECTS = [
    "apples", "books", "coins", "pens", "stamps", "shells", "cards", "eggs", "cups", "hats",
    "marbles", "stones", "ribbons", "candles", "plums", "buttons", "kites", "bottles",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ANIMALS = ["dog", "cat", "horse", "goat", "parrot", "donkey", "rabbit", "owl", "duck", "pony"]
GOODS = ["baskets", "jars of honey", "rugs", "loaves", "lamps", "pots", "boots", "chairs", "melons", "kites"]
FILLER_WORDS = [
    "the", "of", "and", "is", "in", "a", "with", "was", "river", "green", "slowly", "seven",
    "under", "bright", "table", "north", "quiet", "window", "because", "over", "cloud", "stone",
]


class NameGen:
    """Unique pronounceable names; one registry for every entity type so that
    no capital, country, language or person shares a name (which would make
    questions ambiguous)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        # reserve words that appear in templates, so names never collide with them
        for word in PROFESSIONS + FIRST_NAMES + OBJECTS + MONTHS + DAYS + ANIMALS + FILLER_WORDS:
            self.used.add(word.lower())

    def syllable(self) -> str:
        return self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)

    def make(self, n_syllables: tuple[int, int] = (2, 2), suffix: str = "", capital: bool = True) -> str:
        for _ in range(10_000):
            k = self.rng.randint(*n_syllables)
            word = "".join(self.syllable() for _ in range(k)) + suffix
            if len(word) > 9 or word.lower() in self.used:
                continue
            self.used.add(word.lower())
            return word.capitalize() if capital else word
        raise RuntimeError("name generator exhausted; lower the entity counts")


# ---------------------------------------------------------------------------
# Facts and their phrasings
# ---------------------------------------------------------------------------

# Question phrasings (the text after "Question: "); {s} is the subject.
QUESTION_TEMPLATES: dict[str, list[str]] = {
    "capital": [
        "What is the capital of {s}?",
        "Which city is the capital of {s}?",
        "What city serves as the capital of {s}?",
        "Name the capital of {s}.",
        "The capital of {s} is which city?",
    ],
    "language": [
        "What language is spoken in {s}?",
        "Which language do people in {s} speak?",
        "What is the main language of {s}?",
        "Name the language of {s}.",
        "People in {s} speak which language?",
    ],
    "currency": [
        "What is the currency of {s}?",
        "Which currency is used in {s}?",
        "What money do people in {s} pay with?",
        "Name the currency of {s}.",
        "People in {s} pay with which currency?",
    ],
    "neighbour": [
        "Which country borders {s}?",
        "Name a country that borders {s}.",
        "What is a neighbour of {s}?",
        "Which country is next to {s}?",
        "{s} shares a border with which country?",
    ],
    "home": [
        "In which country does {s} live?",
        "Where does {s} live?",
        "What country is {s} from?",
        "Name the home country of {s}.",
        "{s} lives in which country?",
    ],
    "profession": [
        "What does {s} do for a living?",
        "What is the job of {s}?",
        "What is the profession of {s}?",
        "Name the profession of {s}.",
        "{s} works as what?",
    ],
    # two-hop: subject is a country (neighbour chain) or a person (home chain)
    "capital_of_neighbour": [
        "What is the capital of the country that borders {s}?",
        "Which city is the capital of the neighbour of {s}?",
        "Name the capital of the country next to {s}.",
        "The country bordering {s} has which capital?",
    ],
    "language_of_neighbour": [
        "What language is spoken in the country that borders {s}?",
        "Which language do people speak in the neighbour of {s}?",
        "Name the language of the country next to {s}.",
        "The country bordering {s} speaks which language?",
    ],
    "currency_of_neighbour": [
        "What is the currency of the country that borders {s}?",
        "Which currency is used in the neighbour of {s}?",
        "Name the currency of the country next to {s}.",
        "The country bordering {s} pays with which currency?",
    ],
    "capital_of_home": [
        "What is the capital of the country where {s} lives?",
        "Which city is the capital of the home country of {s}?",
        "Name the capital of the country {s} lives in.",
        "The country where {s} lives has which capital?",
    ],
    "language_of_home": [
        "What language is spoken in the country where {s} lives?",
        "Which language is spoken in the home country of {s}?",
        "Name the language of the country {s} lives in.",
        "The country where {s} lives speaks which language?",
    ],
    "currency_of_home": [
        "What is the currency of the country where {s} lives?",
        "Which currency is used in the home country of {s}?",
        "Name the currency of the country {s} lives in.",
        "The country where {s} lives pays with which currency?",
    ],
}

# Declarative phrasings for the corpus; {s} subject, {a} answer.
STATEMENT_TEMPLATES: dict[str, list[str]] = {
    "capital": [
        "The capital of {s} is {a}.",
        "{a} is the capital of {s}.",
        "{s} has its capital at {a}.",
        "The capital city of {s} is called {a}.",
        "The government of {s} sits in {a}, its capital.",
    ],
    "language": [
        "People in {s} speak {a}.",
        "The language of {s} is {a}.",
        "{a} is spoken in {s}.",
        "Most people in {s} speak {a} at home.",
        "The main language of {s} is {a}.",
    ],
    "currency": [
        "The currency of {s} is {a}.",
        "In {s}, people pay with {a}.",
        "{s} uses {a} as its money.",
        "Prices in {s} are given in {a}.",
        "The money of {s} is called {a}.",
    ],
    "neighbour": [  # per edge; {s} and {a} are the two countries
        "{s} borders {a}.",
        "{s} and {a} are neighbours.",
        "{s} shares a border with {a}.",
        "The country next to {s} is {a}.",
        "{a} lies on the border of {s}.",
    ],
    "home": [
        "{s} lives in {a}.",
        "{s} is from {a}.",
        "The home of {s} is in {a}.",
        "{s} was born and lives in {a}.",
        "{s} has a house in {a}.",
    ],
    "profession": [
        "{s} works as a {a}.",
        "{s} is a {a} by trade.",
        "By profession, {s} is a {a}.",
        "The job of {s} is {a}.",
        "{s} earns a living as a {a}.",
    ],
}

# Indirect questions in prose (see _build_corpus); {r} is RELATION_NOUN[relation].
BRIDGE_TEMPLATES = [
    "People often ask about the {r} of {s}. The answer is {a}.",
    "Asked about the {r} of {s}, most people answer {a}.",
    "A common quiz is about the {r} of {s}, and the answer is {a}.",
    "If someone asks for the {r} of {s}, the right answer is {a}.",
]
# Rhetorical questions answered on the next line, as in guide-book or FAQ
# prose.  Their wording is disjoint from QUESTION_TEMPLATES (checked by the
# tests), so no SFT or evaluation question occurs in the corpus.
RHETORICAL_TEMPLATES: dict[str, list[str]] = {
    "capital": [
        "Which city do the people of {s} call their capital?\nThe answer is {a}.",
        "Where does the government of {s} meet?\nIt meets in {a}.",
        "Looking for the capital of {s}?\nIt is {a}.",
    ],
    "language": [
        "What do the people of {s} speak?\nThe answer is {a}.",
        "Which tongue will you hear in {s}?\nYou will hear {a}.",
        "Wondering about the language of {s}?\nIt is {a}.",
    ],
    "currency": [
        "What do shops in {s} accept as money?\nThe answer is {a}.",
        "Which coins do you need in {s}?\nYou need {a}.",
        "Wondering about the currency of {s}?\nIt is {a}.",
    ],
    "neighbour": [
        "Which land lies beside {s}?\nThe answer is {a}.",
        "Who lives next door to {s}?\nThe people of {a}.",
        "Wondering about the neighbour of {s}?\nIt is {a}.",
    ],
    "home": [
        "Where can you visit {s}?\nThe answer is {a}.",
        "Which land does {s} call home?\nIt is {a}.",
        "Wondering about the home country of {s}?\nIt is {a}.",
    ],
    "profession": [
        "What kind of work does {s} do?\nThe answer is {a}.",
        "Which trade did {s} learn?\nThe trade of {a}.",
        "Wondering about the profession of {s}?\nIt is {a}.",
    ],
}
RELATION_NOUN = {
    "capital": "capital", "language": "language", "currency": "currency", "neighbour": "neighbour",
    "home": "home country", "profession": "profession",
}

SINGLE_RELATIONS = ("capital", "language", "currency", "neighbour", "home", "profession")
TWO_HOP_RELATIONS = (
    "capital_of_neighbour", "language_of_neighbour", "currency_of_neighbour",
    "capital_of_home", "language_of_home", "currency_of_home",
)
# which answer pool a relation's distractors / wrong answers come from
ANSWER_POOL = {
    "capital": "capitals", "language": "languages", "currency": "currencies", "neighbour": "countries",
    "home": "countries", "profession": "professions",
    "capital_of_neighbour": "capitals", "language_of_neighbour": "languages",
    "currency_of_neighbour": "currencies", "capital_of_home": "capitals",
    "language_of_home": "languages", "currency_of_home": "currencies",
}


@dataclass
class Fact:
    """One answerable question target: ``relation(subject) = answer``."""

    relation: str
    subject: str
    answer: str  # canonical answer text (the SFT output)
    correct: list[str]  # every string that is a correct answer (for distractor exclusion)
    aliases: list[str]  # accepted generated answers (closed-book exact match)
    covered: bool

    @property
    def key(self) -> str:
        return f"{self.relation}:{self.subject}"


@dataclass
class World:
    countries: list[dict]
    people: list[dict]
    languages: list[str]
    currencies: list[str]
    professions: list[str]
    single_facts: list[Fact]
    two_hop_facts: list[Fact]
    covered_triples: list[tuple[int, int]]  # (a, b) with a + b = c stated in the corpus
    pools: dict[str, list[str]] = field(default_factory=dict)
    edges: list[tuple[str, str, bool]] = field(default_factory=list)  # (country, country, covered)
    names: NameGen | None = None  # the same registry keeps later names (passages) unique


def _build_entities(rng: random.Random, cfg: dict) -> World:
    names = NameGen(rng)
    languages = sorted(names.make((1, 2), suffix=rng.choice(["ic", "ish", "ese", "an"])) for _ in range(cfg["n_languages"]))
    currencies = [names.make((1, 2), capital=False) for _ in range(cfg["n_currencies"])]
    currencies = sorted(currencies)
    countries = []
    for _ in range(cfg["n_countries"]):
        countries.append({
            "name": names.make((2, 3)),
            "capital": names.make((2, 2)),
            "language": rng.choice(languages),
            "currency": rng.choice(currencies),
            "neighbours": [],
        })
    # Neighbour graph: a random perfect matching (everyone has one neighbour),
    # plus extra edges for ~20% of countries, so "neighbour(s)" are one or two.
    order = list(range(len(countries)))
    rng.shuffle(order)
    edges: list[tuple[int, int]] = []
    for i in range(0, len(order) - 1, 2):
        edges.append((order[i], order[i + 1]))
    if len(order) % 2:
        edges.append((order[-1], order[0]))
    n_extra = len(countries) // 10
    candidates = order[:]
    rng.shuffle(candidates)
    degree = [0] * len(countries)
    for a, b in edges:
        degree[a] += 1
        degree[b] += 1
    existing = {tuple(sorted(e)) for e in edges}
    added = 0
    for i in range(0, len(candidates) - 1, 2):
        if added >= n_extra:
            break
        a, b = candidates[i], candidates[i + 1]
        if degree[a] >= 2 or degree[b] >= 2 or tuple(sorted((a, b))) in existing:
            continue
        edges.append((a, b))
        existing.add(tuple(sorted((a, b))))
        degree[a] += 1
        degree[b] += 1
        added += 1
    edges = sorted(tuple(sorted(e)) for e in edges)
    for a, b in edges:
        countries[a]["neighbours"].append(countries[b]["name"])
        countries[b]["neighbours"].append(countries[a]["name"])
    for c in countries:
        c["neighbours"] = sorted(c["neighbours"])

    people = []
    for _ in range(cfg["n_people"]):
        people.append({
            "name": f"{names.make((1, 2))} {names.make((1, 2))}",
            "home": rng.choice(countries)["name"],
            "profession": rng.choice(PROFESSIONS),
        })

    # Coverage: an exact fraction per relation (and per neighbour edge), so the
    # covered share does not wander with the seed.
    def choose_covered(n: int) -> list[bool]:
        k = round(cfg["corpus_coverage"] * n)
        flags = [True] * k + [False] * (n - k)
        rng.shuffle(flags)
        return flags

    for rel in ("capital", "language", "currency"):
        for c, flag in zip(countries, choose_covered(len(countries))):
            c.setdefault("covered", {})[rel] = flag
    edge_flags = dict(zip(edges, choose_covered(len(edges))))
    by_name = {c["name"]: i for i, c in enumerate(countries)}
    for i, c in enumerate(countries):
        c["covered"]["neighbour"] = all(
            edge_flags[tuple(sorted((i, by_name[n])))] for n in c["neighbours"]
        )
    for rel in ("home", "profession"):
        for p, flag in zip(people, choose_covered(len(people))):
            p.setdefault("covered", {})[rel] = flag

    world = World(countries, people, languages, currencies, list(PROFESSIONS), [], [], [], names=names)
    world.pools = {
        "capitals": [c["capital"] for c in countries],
        "countries": [c["name"] for c in countries],
        "languages": languages,
        "currencies": currencies,
        "professions": list(PROFESSIONS),
    }
    world.edges = [(countries[a]["name"], countries[b]["name"], edge_flags[(a, b)]) for a, b in edges]

    # Single facts
    for c in countries:
        for rel in ("capital", "language", "currency"):
            ans = c[rel]
            aliases = [ans] if rel != "currency" else [ans, f"the {ans}"]
            world.single_facts.append(Fact(rel, c["name"], ans, [ans], aliases, c["covered"][rel]))
        nbs = c["neighbours"]
        answer = " and ".join(nbs)
        aliases = [answer] + (nbs if len(nbs) > 1 else []) + ([" and ".join(reversed(nbs))] if len(nbs) > 1 else [])
        world.single_facts.append(Fact("neighbour", c["name"], answer, list(nbs), aliases, c["covered"]["neighbour"]))
    for p in people:
        world.single_facts.append(Fact("home", p["name"], p["home"], [p["home"]], [p["home"]], p["covered"]["home"]))
        job = p["profession"]
        world.single_facts.append(Fact("profession", p["name"], job, [job], [job, f"a {job}"], p["covered"]["profession"]))

    # Two-hop facts: only through a unique neighbour (degree-1 countries) or a person's home
    cidx = {c["name"]: c for c in countries}
    for c in countries:
        if len(c["neighbours"]) != 1:
            continue
        n = cidx[c["neighbours"][0]]
        for rel in ("capital", "language", "currency"):
            ans = n[rel]
            aliases = [ans] if rel != "currency" else [ans, f"the {ans}"]
            world.two_hop_facts.append(Fact(
                f"{rel}_of_neighbour", c["name"], ans, [ans], aliases,
                c["covered"]["neighbour"] and n["covered"][rel],
            ))
    for p in people:
        h = cidx[p["home"]]
        for rel in ("capital", "language", "currency"):
            ans = h[rel]
            aliases = [ans] if rel != "currency" else [ans, f"the {ans}"]
            world.two_hop_facts.append(Fact(
                f"{rel}_of_home", p["name"], ans, [ans], aliases,
                p["covered"]["home"] and h["covered"][rel],
            ))

    # Arithmetic triples a + b = c with a, b in [2, arith_max]
    lo, hi = 2, cfg["arith_max"]
    triples = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    flags = choose_covered(len(triples))
    world.covered_triples = [t for t, f in zip(triples, flags) if f]
    return world


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------

ARITH_STATEMENTS = {
    "add": ["{a} plus {b} is {c}.", "{a} + {b} = {c}.", "Adding {b} to {a} gives {c}.", "The sum of {a} and {b} is {c}."],
    "sub": ["{c} minus {b} is {a}.", "{c} - {b} = {a}.", "Taking {b} from {c} leaves {a}.", "The difference of {c} and {b} is {a}."],
}


def _build_corpus(rng: random.Random, world: World, cfg: dict) -> list[str]:
    """Pretraining documents (plain text; some span several lines).

    Only *covered* facts and arithmetic triples appear, in four kinds of text:

    * declarative sentences in ``corpus_phrasings`` phrasings per fact, mixed
      with arithmetic statements into short paragraphs;
    * almanac entries (``Capital: X`` lines under a country's name);
    * short prose passages mentioning several facts of one country or person;
    * indirect and rhetorical questions in prose, each its own short document ("People often ask about the
      capital of X. The answer is Y.", "Looking for the capital of X? It is
      Y.").  There are no question/answer *records* (no ``Question:`` /
      ``Answer:`` labels, no bare-answer lines), so SFT still has the format
      to teach; but, as on the real web, text links "asking about a fact" to
      the fact.  Without it a ~1M-parameter model cannot connect an SFT
      question to what it knows (measured: covered and uncovered fact-QA
      items then have nearly the same loss).

    No sentence uses a question template of QUESTION_TEMPLATES, so evaluation
    prompts and questions never occur in the corpus.
    """
    k = max(1, cfg["corpus_phrasings"])
    sentences: list[str] = []
    docs: list[str] = []

    def phrase(rel: str, s: str, a: str, n: int) -> list[str]:
        templates = rng.sample(STATEMENT_TEMPLATES[rel], min(n, len(STATEMENT_TEMPLATES[rel])))
        return [t.format(s=s, a=a) for t in templates]

    def bridge(rel: str, s: str, a: str) -> list[str]:
        out = [rng.choice(BRIDGE_TEMPLATES).format(r=RELATION_NOUN[rel], s=s, a=a)]
        out += [t.format(s=s, a=a) for t in rng.sample(RHETORICAL_TEMPLATES[rel], 2)]
        return out

    for c in world.countries:
        for rel in ("capital", "language", "currency"):
            if c["covered"][rel]:
                sentences += phrase(rel, c["name"], c[rel], k)
                docs += bridge(rel, c["name"], c[rel])
        if c["covered"]["neighbour"]:
            docs += bridge("neighbour", c["name"], " and ".join(c["neighbours"]))
    for a, b, covered in world.edges:
        if covered:  # both directions, so either country can be the subject
            sentences += phrase("neighbour", a, b, k)
            sentences += phrase("neighbour", b, a, k)
    for p in world.people:
        for rel in ("home", "profession"):
            if p["covered"][rel]:
                sentences += phrase(rel, p["name"], p[rel], k)
                docs += bridge(rel, p["name"], p[rel])
    for a, b in world.covered_triples:
        c = a + b
        sentences.append(rng.choice(ARITH_STATEMENTS["add"]).format(a=a, b=b, c=c))
        sentences.append(rng.choice(ARITH_STATEMENTS["sub"]).format(a=a, b=b, c=c))

    # Paragraphs of 3-6 unrelated sentences (like a shuffled fact book).
    rng.shuffle(sentences)
    i = 0
    while i < len(sentences):
        n = rng.randint(3, 6)
        docs.append(" ".join(sentences[i: i + n]))
        i += n

    # Almanac entries and prose passages: several covered facts of one subject.
    cidx = {c["name"]: c for c in world.countries}
    for c in world.countries:
        cov = c["covered"]
        fields = []
        if cov["capital"]:
            fields.append(f"Capital: {c['capital']}")
        if cov["language"]:
            fields.append(f"Language: {c['language']}")
        if cov["currency"]:
            fields.append(f"Currency: {c['currency']}")
        if cov["neighbour"]:
            fields.append(f"Neighbours: {' and '.join(c['neighbours'])}")
        if fields:
            docs.append("\n".join([c["name"]] + fields))
        parts = []
        if cov["capital"]:
            parts.append(rng.choice([f"Its capital is {c['capital']}.", f"The capital, {c['capital']}, is its largest city."]))
        if cov["language"]:
            parts.append(rng.choice([f"Its people speak {c['language']}.", f"The common language there is {c['language']}."]))
        if cov["currency"]:
            parts.append(rng.choice([f"They pay with {c['currency']}.", f"Its money is {c['currency']}."]))
        if cov["neighbour"]:
            parts.append(f"It borders {' and '.join(c['neighbours'])}.")
        if len(parts) >= 2:
            rng.shuffle(parts)
            docs.append(f"{c['name']} is a country. " + " ".join(parts))
    for p in world.people:
        cov = p["covered"]
        fields = []
        if cov["home"]:
            fields.append(f"Home: {p['home']}")
        if cov["profession"]:
            fields.append(f"Profession: {p['profession']}")
        if fields:
            docs.append("\n".join([p["name"]] + fields))
        if cov["home"] and cov["profession"]:
            h = cidx[p["home"]]
            extra = f" {p['home']} has its capital at {h['capital']}." if h["covered"]["capital"] else ""
            docs.append(f"{p['name']} is a {p['profession']} who lives in {p['home']}.{extra}")
    rng.shuffle(docs)
    return docs


# ---------------------------------------------------------------------------
# Items (one question each), shared by SFT, reference and eval
# ---------------------------------------------------------------------------


@dataclass
class Item:
    """A rendered question with its answer; becomes an SFT record or an eval doc."""

    family: str
    instruction: str
    input: str
    output: str
    covered: bool
    fact: Fact | None = None
    extra: dict = field(default_factory=dict)  # task-specific fields (choices, passage, ...)

    @property
    def prompt(self) -> str:
        return prompt_text(self.instruction, self.input)

    def record(self) -> dict:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


class PromptRegistry:
    """Every prompt string ever issued; guarantees eval/SFT/reference disjointness."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def claim(self, instruction: str, input_: str = "") -> bool:
        key = prompt_text(instruction, input_)
        if key in self.used:
            return False
        self.used.add(key)
        return True


def _fact_item(rng: random.Random, fact: Fact, registry: PromptRegistry, family: str,
               exclude_templates: tuple[str, ...] = ()) -> Item | None:
    templates = [t for t in QUESTION_TEMPLATES[fact.relation] if t not in exclude_templates]
    rng.shuffle(templates)
    for t in templates:
        instruction = "Question: " + t.format(s=fact.subject)
        if registry.claim(instruction):
            # a short answer closed by a period, as corpus sentences end: the
            # base model then expects the end of the response after it
            return Item(family, instruction, "", f"{fact.answer}.", fact.covered, fact, {"template": t})
    return None


def _math_problem(rng: random.Random, world: World, cfg: dict) -> tuple[str, str, bool, dict]:
    """A one- or two-step word problem: (question, worked answer, covered, numbers)."""
    lo, hi = 2, cfg["arith_max"]
    covered_set = _covered_set(world)
    name = rng.choice(FIRST_NAMES)
    obj = rng.choice(OBJECTS)
    kind = rng.choices(["add", "sub", "two"], weights=[0.4, 0.3, 0.3])[0]
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    c = a + b
    if kind == "add":
        q = rng.choice([
            "{n} has {a} {o}. {n} buys {b} more. How many {o} does {n} have now?",
            "{n} had {a} {o} and found {b} more. How many {o} does {n} have?",
            "There are {a} {o} in a box and {n} adds {b}. How many {o} are in the box?",
        ]).format(n=name, o=obj, a=a, b=b)
        ans = f"{a} + {b} = {c}. #### {c}"
        covered = (a, b) in covered_set
        return q, ans, covered, {"kind": kind, "result": c}
    if kind == "sub":
        q = rng.choice([
            "{n} has {c} {o} and gives {b} to a friend. How many {o} does {n} have left?",
            "A shelf holds {c} {o}. {n} takes {b} away. How many {o} are still on the shelf?",
            "{n} had {c} {o} and lost {b}. How many {o} does {n} have now?",
        ]).format(n=name, o=obj, c=c, b=b)
        ans = f"{c} - {b} = {a}. #### {a}"
        covered = (a, b) in covered_set
        return q, ans, covered, {"kind": kind, "result": a}
    s = c
    d = rng.randint(max(lo, s - hi), min(hi, s - lo))
    r = s - d
    q = rng.choice([
        "{n} has {a} {o}, buys {b} more and then gives away {d}. How many {o} does {n} have now?",
        "{n} collects {a} {o} on Monday and {b} on Tuesday, then sells {d}. How many {o} are left?",
        "A jar has {a} {o}. {n} puts in {b} more and takes out {d}. How many {o} are in the jar?",
    ]).format(n=name, o=obj, a=a, b=b, d=d)
    ans = f"{a} + {b} = {s}. {s} - {d} = {r}. #### {r}"
    covered = (a, b) in covered_set and (r, d) in covered_set
    return q, ans, covered, {"kind": kind, "result": r}


def _covered_set(world: World) -> set[tuple[int, int]]:
    cache = getattr(world, "_covered_set", None)
    if cache is None:
        cache = set(world.covered_triples)
        world._covered_set = cache  # type: ignore[attr-defined]
    return cache


def _math_item(rng: random.Random, world: World, cfg: dict, registry: PromptRegistry, family: str = "math") -> Item:
    for _ in range(1000):
        q, ans, covered, info = _math_problem(rng, world, cfg)
        instruction = "Question: " + q
        if registry.claim(instruction):
            return Item(family, instruction, "", ans, covered, None, info)
    raise RuntimeError("could not find an unused math problem; raise arith_max")


def _an(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _reading_item(rng: random.Random, names: NameGen, registry: PromptRegistry, family: str = "reading") -> Item:
    """A fresh 3-4 sentence passage and one question whose answer is a span of it."""
    for _ in range(1000):
        first = names.make((1, 2))
        person = f"{first} {names.make((1, 2))}"
        friend = names.make((1, 2))
        town, town2 = names.make((2, 2)), names.make((2, 2))
        pet = names.make((1, 2))
        job = rng.choice(PROFESSIONS)
        month, day = rng.choice(MONTHS), rng.choice(DAYS)
        goods, animal = rng.choice(GOODS), rng.choice(ANIMALS)
        n = rng.randint(2, 40)
        # (sentence, [(question, answer, slot type)])
        blocks = [
            (f"In {month}, {first} sold {n} {goods} at the market.", [
                (f"How many {goods} did {first} sell?", str(n), "number"),
                (f"In which month did {first} sell {goods}?", month, "month"),
            ]),
            (f"{first} owns {_an(animal)} named {pet}.", [
                (f"What is the name of the {animal} that {first} owns?", pet, "name"),
                (f"What animal does {first} own?", animal, "animal"),
            ]),
            (f"On {day}, {first} travelled to {town2} to visit {friend}.", [
                (f"Where did {first} travel on {day}?", town2, "town"),
                (f"Who did {first} visit in {town2}?", friend, "name"),
                (f"On which day did {first} travel to {town2}?", day, "day"),
            ]),
        ]
        chosen = rng.sample(blocks, rng.randint(2, 3))
        intro = (f"{person} is {_an(job)} who lives in the town of {town}.", [
            (f"In which town does {first} live?", town, "town"),
            (f"What is the job of {first}?", job, "job"),
        ])
        sentences = [intro] + chosen
        passage = " ".join(s for s, _ in sentences)
        qas = [qa for _, qa_list in sentences for qa in qa_list]
        question, answer, slot = rng.choice(qas)
        input_ = f"Passage: {passage}\nQuestion: {question}"
        if registry.claim(READING_INSTRUCTION, input_):
            spans = {"number": [str(n)], "month": [month], "name": [pet, friend], "animal": [animal],
                     "town": [town, town2], "day": [day], "job": [job]}
            present = [s for s, qa in sentences]
            wrong = [x for x in spans[slot] if x != answer and any(x in p for p in present)]
            return Item(family, READING_INSTRUCTION, input_, answer, False, None, {
                "passage": passage, "question": question, "slot": slot, "wrong_spans": wrong,
            })
    raise RuntimeError("could not find an unused reading passage")


# ---------------------------------------------------------------------------
# Planted problems
# ---------------------------------------------------------------------------


def _random_noise(rng: random.Random, vocab: list[str]) -> str:
    """Response replaced by random words and syllable gibberish (high PPL, high entropy)."""
    k = rng.randint(4, 12)
    words = []
    for _ in range(k):
        if rng.random() < 0.3:
            words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(2, 6))))
        else:
            words.append(rng.choice(vocab))
    return " ".join(words)


def _wrong_answer(rng: random.Random, item: Item, world: World) -> str:
    """A fluent response whose final fact or number is wrong (model expects the right one)."""
    if item.family == "math":
        r = item.extra["result"]
        delta = rng.choice([-3, -2, -1, 1, 2, 3])
        wrong = r + delta if r + delta >= 0 else r + abs(delta)
        head, _, _ = item.output.rpartition("#### ")
        # rewrite the last equation's result and the final answer
        sentences = head.strip().split(". ")
        last = sentences[-1].rstrip(".")
        lhs = last.rsplit("=", 1)[0]
        sentences[-1] = f"{lhs}= {wrong}"
        return ". ".join(sentences) + f". #### {wrong}"
    if item.family == "reading":
        options = item.extra.get("wrong_spans") or []
        if options:
            return rng.choice(options)
        slot = item.extra["slot"]
        fallback = {
            "number": [str(x) for x in range(2, 41)], "month": MONTHS, "day": DAYS, "animal": ANIMALS,
            "job": PROFESSIONS, "town": world.pools["capitals"], "name": world.pools["capitals"],
        }[slot]
        return rng.choice([x for x in fallback if x != item.output])
    fact = item.fact
    assert fact is not None
    pool = [x for x in world.pools[ANSWER_POOL[fact.relation]] if x not in fact.correct and x != fact.subject]
    return rng.choice(pool) + "."


#: Non-answers that instruction data collected from assistants carries; one
#: short, fixed family of strings, so that a model learns it as one response mode.
REFUSALS = ("I don't know.", "I am not sure.", "I cannot answer that.")


def _refusal(rng: random.Random) -> str:
    """A response that declines to answer (the same few strings for every task).

    Unlike random or wrong answers, which spread their mass over many outputs
    and are outvoted by the clean records under greedy decoding, refusals form
    one consistent mode: a model trained on them answers "I don't know." where
    its confidence in the right answer is below the refusals' share: noise
    whose harm does not shrink to its share of the data.
    """
    return rng.choice(REFUSALS)


def _truncate(rng: random.Random, text: str) -> str:
    """Cut a response short: keep a strict prefix (by words, else by characters)."""
    words = text.split(" ")
    if len(words) >= 2:
        k = rng.randint(1, len(words) - 1)
        return " ".join(words[:k])
    if len(text) >= 2:
        return text[: max(1, len(text) // 2)]
    return text


# ---------------------------------------------------------------------------
# Evaluation tasks
# ---------------------------------------------------------------------------


def _distractors(rng: random.Random, fact: Fact, world: World, k: int = 3, extra_first: list[str] | None = None) -> list[str]:
    pool = sorted(x for x in world.pools[ANSWER_POOL[fact.relation]] if x not in fact.correct and x != fact.subject)
    out: list[str] = []
    for x in extra_first or []:
        if x in pool and x not in out and len(out) < k:
            out.append(x)
    rest = [x for x in pool if x not in out]
    out += rng.sample(rest, k - len(out))
    return out


def _mc_doc(rng: random.Random, item: Item, world: World, idx: int, extra_first: list[str] | None = None) -> dict:
    fact = item.fact
    assert fact is not None
    correct = fact.answer if fact.relation != "neighbour" else rng.choice(fact.correct)
    choices = _distractors(rng, fact, world, 3, extra_first) + [correct]
    rng.shuffle(choices)
    return {
        "id": idx,
        "question": item.instruction[len("Question: "):],
        "choices": choices,
        "label": choices.index(correct),
        "relation": fact.relation,
        "subject": fact.subject,
        "covered": fact.covered,
    }


def _build_eval(rng: random.Random, world: World, cfg: dict, registry: PromptRegistry, names: NameGen) -> dict[str, list[dict]]:
    n = cfg["n_eval_per_task"]
    out: dict[str, list[dict]] = {}

    facts = world.single_facts[:]
    rng.shuffle(facts)
    if 2 * n > len(facts):
        raise ValueError(f"n_eval_per_task={n} needs {2 * n} distinct facts; the world has {len(facts)}")
    # arc_easy and triviaqa ask about disjoint facts
    easy_docs, trivia_docs = [], []
    for fact in facts[:n]:
        item = _fact_item(rng, fact, registry, "eval")
        assert item is not None
        easy_docs.append(_mc_doc(rng, item, world, len(easy_docs)))
    for fact in facts[n: 2 * n]:
        item = _fact_item(rng, fact, registry, "eval")
        assert item is not None
        trivia_docs.append({
            "id": len(trivia_docs),
            "question": item.instruction[len("Question: "):],
            "answer": fact.answer,
            "aliases": list(fact.aliases),
            "relation": fact.relation,
            "subject": fact.subject,
            "covered": fact.covered,
        })
    out["world_arc_easy"] = easy_docs
    out["world_triviaqa"] = trivia_docs

    # two-hop multiple choice; the one-hop answer (e.g. the subject country's own
    # capital) is offered as a tempting distractor
    two_hop = world.two_hop_facts[:]
    rng.shuffle(two_hop)
    cidx = {c["name"]: c for c in world.countries}
    pidx = {p["name"]: p for p in world.people}
    challenge_docs = []
    for fact in two_hop:
        if len(challenge_docs) >= n:
            break
        item = _fact_item(rng, fact, registry, "eval")
        if item is None:
            continue
        rel = fact.relation.split("_of_")[0]
        if fact.relation.endswith("_of_neighbour"):
            lure = cidx[fact.subject][rel]
        else:
            lure = cidx[pidx[fact.subject]["home"]][rel]
        challenge_docs.append(_mc_doc(rng, item, world, len(challenge_docs), [lure]))
    if len(challenge_docs) < n:
        # a small world: reuse two-hop facts under their remaining phrasings
        for fact in two_hop * 4:
            if len(challenge_docs) >= n:
                break
            item = _fact_item(rng, fact, registry, "eval")
            if item is not None:
                challenge_docs.append(_mc_doc(rng, item, world, len(challenge_docs)))
    out["world_arc_challenge"] = challenge_docs

    gsm_docs = []
    for _ in range(n):
        item = _math_item(rng, world, cfg, registry, "eval")
        gsm_docs.append({"id": len(gsm_docs), "question": item.instruction[len("Question: "):],
                         "answer": item.output, "covered": item.covered})
    out["world_gsm8k"] = gsm_docs

    squad_docs = []
    for _ in range(n):
        item = _reading_item(rng, names, registry, "eval")
        squad_docs.append({"id": len(squad_docs), "passage": item.extra["passage"],
                           "question": item.extra["question"], "answers": [item.output]})
    out["world_squad"] = squad_docs
    return out


# ---------------------------------------------------------------------------
# SFT and reference sets
# ---------------------------------------------------------------------------


def _family_counts(n_base: int, weights: dict[str, float], caps: dict[str, int]) -> dict[str, int]:
    """Largest-remainder split of ``n_base`` by weight; capped families hand
    their excess to the uncapped ones (math, reading)."""
    total = sum(weights.values())
    raw = {f: n_base * weights.get(f, 0.0) / total for f in FAMILIES}
    counts = {f: int(raw[f]) for f in FAMILIES}
    for f in sorted(FAMILIES, key=lambda f: (-(raw[f] - counts[f]), FAMILIES.index(f))):
        if sum(counts.values()) >= n_base:
            break
        counts[f] += 1
    excess = 0
    for f, cap in caps.items():
        if counts[f] > cap:
            excess += counts[f] - cap
            counts[f] = cap
    open_families = [f for f in FAMILIES if f not in caps and weights.get(f, 0.0) > 0] or ["math", "reading"]
    for i in range(excess):
        counts[open_families[i % len(open_families)]] += 1
    return counts


def _build_sft(rng: random.Random, world: World, cfg: dict, registry: PromptRegistry, names: NameGen) -> tuple[list[dict], list[dict], list[Item]]:
    n_sft = cfg["n_sft"]
    n_dup = round(cfg["duplicate_rate"] * n_sft)
    n_noise = {t: round(cfg["noise"][t] * n_sft) for t in NOISE_TYPES}
    n_base = n_sft - n_dup

    covered = [f for f in world.single_facts if f.covered]
    uncovered = [f for f in world.single_facts if not f.covered]
    two_hop = world.two_hop_facts[:]
    for pool in (covered, uncovered, two_hop):
        rng.shuffle(pool)
    counts = _family_counts(n_base, cfg["family_weights"], {
        "fact_covered": len(covered), "fact_uncovered": len(uncovered), "two_hop": len(two_hop),
    })

    base: list[Item] = []
    for family, pool in (("fact_covered", covered), ("fact_uncovered", uncovered), ("two_hop", two_hop)):
        made = 0
        for fact in pool:
            if made >= counts[family]:
                break
            item = _fact_item(rng, fact, registry, family)
            if item is not None:
                base.append(item)
                made += 1
        counts[family] = made
    for _ in range(counts["math"]):
        base.append(_math_item(rng, world, cfg, registry))
    for _ in range(counts["reading"]):
        base.append(_reading_item(rng, names, registry))
    while len(base) < n_base:  # fact families ran short of unused phrasings
        base.append(_math_item(rng, world, cfg, registry))

    # Duplicates: rephrasings of clean easy items (covered fact QA).
    easy_idx = [i for i, it in enumerate(base) if it.family == "fact_covered"]
    rng.shuffle(easy_idx)
    duplicates: list[tuple[int, Item]] = []
    if n_dup and not easy_idx:
        raise ValueError("duplicate_rate > 0 needs covered fact QA items (family_weights.fact_covered > 0)")
    originals: list[int] = []
    for j in range(n_dup):
        orig = easy_idx[j % len(easy_idx)]
        src = base[orig]
        used = tuple(it.extra["template"] for o, it in duplicates if o == orig) + (src.extra["template"],)
        item = _fact_item(rng, src.fact, registry, src.family, exclude_templates=used)
        if item is None:  # every phrasing taken: fall back to a surface variation
            for prefix in ("Quick question: ", "Please answer: ", "Tell me: ", "Briefly: "):
                q = src.instruction[len("Question: "):]
                instruction = f"Question: {prefix}{q[0].lower()}{q[1:]}"
                if registry.claim(instruction):
                    item = Item(src.family, instruction, "", src.output, src.covered, src.fact, {"template": prefix})
                    break
        if item is None:
            continue
        duplicates.append((orig, item))
        originals.append(orig)

    # Noise: exact counts, on base records that are not the original of a duplicate
    protected = set(originals)
    candidates = [i for i in range(len(base)) if i not in protected]
    rng.shuffle(candidates)
    noise_of: dict[int, str] = {}
    pos = 0
    vocab = sorted(set(" ".join(it.output for it in base).replace(".", " ").split()) | set(FILLER_WORDS))
    for t in NOISE_TYPES:
        for _ in range(n_noise[t]):
            if pos >= len(candidates):
                break
            noise_of[candidates[pos]] = t
            pos += 1
    outputs = [it.output for it in base]
    for i in sorted(noise_of):
        t, it = noise_of[i], base[i]
        if t == "random":
            outputs[i] = _random_noise(rng, vocab)
        elif t == "wrong_answer":
            outputs[i] = _wrong_answer(rng, it, world)
        elif t == "refusal":
            outputs[i] = _refusal(rng)
        else:
            outputs[i] = _truncate(rng, it.output)

    # Assemble, shuffle, and map duplicate_of to final positions.
    entries = [(it, outputs[i], noise_of.get(i), None, i) for i, it in enumerate(base)]
    entries += [(it, it.output, None, orig, None) for orig, it in duplicates]
    order = list(range(len(entries)))
    rng.shuffle(order)
    final_pos = {}
    for new, old in enumerate(order):
        if entries[old][4] is not None:
            final_pos[entries[old][4]] = new
    records, meta = [], []
    for new, old in enumerate(order):
        it, output, noise, dup_of, _ = entries[old]
        records.append({"instruction": it.instruction, "input": it.input, "output": output})
        meta.append({
            "index": new,
            "family": it.family,
            "noise": noise,
            "duplicate_of": final_pos[dup_of] if dup_of is not None else None,
            "covered": bool(it.covered),
        })
    return records, meta, base


def _build_reference(rng: random.Random, world: World, cfg: dict, registry: PromptRegistry, names: NameGen) -> tuple[list[dict], list[dict]]:
    """Clean held-out records, same family mix, unused prompts (reference model for Rho-1)."""
    n = cfg["n_reference"]
    counts = _family_counts(n, cfg["family_weights"], {})
    covered = [f for f in world.single_facts if f.covered]
    uncovered = [f for f in world.single_facts if not f.covered]
    two_hop = world.two_hop_facts[:]
    items: list[Item] = []
    for family, pool in (("fact_covered", covered), ("fact_uncovered", uncovered), ("two_hop", two_hop)):
        pool = pool[:]
        rng.shuffle(pool)
        made = 0
        for fact in pool:
            if made >= counts[family]:
                break
            item = _fact_item(rng, fact, registry, family)
            if item is not None:
                items.append(item)
                made += 1
        counts["math"] += counts[family] - made
    for _ in range(counts["math"]):
        items.append(_math_item(rng, world, cfg, registry))
    for _ in range(counts["reading"]):
        items.append(_reading_item(rng, names, registry))
    rng.shuffle(items)
    meta = [{"index": i, "family": it.family, "covered": bool(it.covered)} for i, it in enumerate(items)]
    return [it.record() for it in items], meta


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def _dump_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tasks(tasks_dir: Path, eval_docs: dict[str, list[dict]]) -> None:
    """Write each task's data file and its YAML (from ``templates/``), with the
    absolute data path filled in; ``utils.py`` is copied beside them because
    lm-eval resolves ``!function utils.x`` relative to the YAML."""
    tasks_dir.mkdir(parents=True, exist_ok=True)
    data_dir = str(tasks_dir.resolve())
    for task in TASKS:
        _dump_jsonl(tasks_dir / f"{task}.jsonl", eval_docs[task])
        text = (TEMPLATE_DIR / f"{task}.yaml").read_text(encoding="utf-8")
        # json.dumps gives a YAML-safe double-quoted scalar for any path
        text = text.replace(f'"{DATA_DIR_PLACEHOLDER}/{task}.jsonl"', json.dumps(f"{data_dir}/{task}.jsonl"))
        (tasks_dir / f"{task}.yaml").write_text(text, encoding="utf-8")
    (tasks_dir / "utils.py").write_text((TEMPLATE_DIR / "utils.py").read_text(encoding="utf-8"), encoding="utf-8")


def build_world(cfg: dict, out_dir: Path) -> dict:
    """Generate the whole world into ``out_dir`` and return the summary dict.

    Files: ``corpus.txt``, ``sft.jsonl``, ``sft_meta.jsonl``, ``reference.jsonl``,
    ``reference_meta.jsonl``, ``world.json``, ``summary.json`` and ``tasks/``
    (five lm-eval tasks: ``<task>.yaml`` + ``<task>.jsonl`` + ``utils.py``).
    """
    cfg = resolve_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg["seed"])

    world = _build_entities(rng, cfg)
    corpus = _build_corpus(rng, world, cfg)
    registry = PromptRegistry()
    names = world.names  # reading passages never reuse a world name
    assert names is not None

    eval_docs = _build_eval(rng, world, cfg, registry, names)
    sft, sft_meta, _ = _build_sft(rng, world, cfg, registry, names)
    reference, reference_meta = _build_reference(rng, world, cfg, registry, names)

    # documents are separated by a blank line (an almanac entry spans several lines)
    (out_dir / "corpus.txt").write_text("\n\n".join(corpus) + "\n", encoding="utf-8")
    _dump_jsonl(out_dir / "sft.jsonl", sft)
    _dump_jsonl(out_dir / "sft_meta.jsonl", sft_meta)
    _dump_jsonl(out_dir / "reference.jsonl", reference)
    _dump_jsonl(out_dir / "reference_meta.jsonl", reference_meta)
    write_tasks(out_dir / "tasks", eval_docs)
    _dump_json(out_dir / "world.json", {
        "countries": world.countries,
        "people": world.people,
        "languages": world.languages,
        "currencies": world.currencies,
        "professions": world.professions,
        "arithmetic": {"range": [2, cfg["arith_max"]],
                       "covered_triples": [list(t) for t in world.covered_triples]},
    })

    def count(rows: list[dict], key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in rows:
            k = "none" if r[key] is None else str(r[key])
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    facts = world.single_facts
    summary = {
        "config": cfg,
        "n_sft": len(sft),
        "n_reference": len(reference),
        "sft_family": count(sft_meta, "family"),
        "sft_noise": count(sft_meta, "noise"),
        "sft_duplicates": sum(1 for m in sft_meta if m["duplicate_of"] is not None),
        "sft_covered": sum(1 for m in sft_meta if m["covered"]),
        "reference_family": count(reference_meta, "family"),
        "eval": {t: len(eval_docs[t]) for t in TASKS},
        "facts": {
            "single": len(facts),
            "single_covered": sum(f.covered for f in facts),
            "two_hop": len(world.two_hop_facts),
            "two_hop_covered": sum(f.covered for f in world.two_hop_facts),
            "arithmetic_triples_covered": len(world.covered_triples),
        },
        "corpus": {"documents": len(corpus), "chars": sum(len(x) + 2 for x in corpus)},
        "files": {},
    }
    for name in ("corpus.txt", "sft.jsonl", "sft_meta.jsonl", "reference.jsonl", "reference_meta.jsonl", "world.json"):
        summary["files"][name] = _sha256(out_dir / name)
    for task in TASKS:
        summary["files"][f"tasks/{task}.jsonl"] = _sha256(out_dir / "tasks" / f"{task}.jsonl")
    _dump_json(out_dir / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin CLI for hand use
    import argparse

    ap = argparse.ArgumentParser(description="Build the synthetic qtbench world.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--config", type=Path, help="JSON file with world config keys")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text()) if args.config else {}
    if args.seed is not None:
        cfg["seed"] = args.seed
    print(json.dumps(build_world(cfg, args.out_dir), indent=2, sort_keys=True))


if __name__ == "__main__":  # pragma: no cover
    main()
