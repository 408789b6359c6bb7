"""The project's own extractive-QA set: fictional paragraphs that must be read to be answered.

Why it is built this way
- Every name (people, towns, ships, guilds, bridges, regions) is made of random syllables and used once in the whole
  corpus, so an answer cannot be remembered from another example; dev names never occur in train.
- A paragraph states several facts, grouped so that each answer type has distractors of the same type in the same
  paragraph (three birth years, three founders...). Some relations share an answer type (born/died: years;
  founded/teacher: people; home port/lives in: places), so "the first year in the text" is usually wrong.
- Each relation has several statement forms and at least three question phrasings, so matching one fixed pattern
  does not work either.
- A share of paragraphs (long_context_frac) is padded with fictional filler sentences (which carry their own years,
  names and numbers) past 128 tokens, so doc-stride windows matter and the answer is often not in the first window.
- With unanswerable_frac > 0 some questions ask about an entity the paragraph never mentions (answers empty, v2 style).

The set is a pure function of the generator settings and GENERATOR_VERSION; `ensure_generated` writes it once as flat
JSON lines under the cache dir (atomically) and the normal local-file loader reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.config import ConfigError, load_config, split_args
from experiments.provenance import REPO_ROOT

from .errors import DataError
from .generated_text import (
    CODAS,
    COLOURS,
    DEVICE_ADJECTIVES,
    DEVICE_NOUNS,
    FILLERS,
    INTROS,
    JOBS,
    NUCLEI,
    ONSETS,
    RELATIONS,
    TITLES,
    Relation,
)

GENERATOR_VERSION = 1  # bump whenever the output for the same settings changes
SETTING_KEYS = (
    "seed",
    "n_train",
    "n_dev",
    "facts_per_context",
    "questions_per_context",
    "long_context_frac",
    "unanswerable_frac",
)


class NameRegistry:
    """Fresh fictional words; no word is handed out twice (across kinds, paragraphs and splits)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def word(self, rng: random.Random, syllables: int | None = None) -> str:
        while True:
            count = syllables or rng.choice((2, 2, 2, 2, 3))
            parts = [rng.choice(ONSETS) + rng.choice(NUCLEI) + rng.choice(CODAS) for _ in range(count)]
            word = "".join(parts).capitalize()
            if len(word) >= 4 and word.lower() not in self.used:
                self.used.add(word.lower())
                return word


def _entity(kind: str, rng: random.Random, names: NameRegistry) -> str:
    if kind == "person":
        return f"{names.word(rng)} {names.word(rng)}"
    return names.word(rng)  # town, ship, guild, bridge, place: one fresh word


def _answer_value(kind: str, rng: random.Random, names: NameRegistry) -> str:
    if kind == "year":
        return str(rng.randint(1480, 1899))
    if kind == "person":
        return _entity("person", rng, names)
    if kind == "place":
        return names.word(rng)
    if kind == "device":
        return f"{rng.choice(DEVICE_ADJECTIVES)} {rng.choice(DEVICE_NOUNS)}"
    if kind == "colour":
        return rng.choice(COLOURS)
    if kind == "number":
        return str(rng.randint(120, 9800))
    if kind == "length":
        return f"{rng.randint(30, 950)} metres"
    if kind == "job":
        return rng.choice(JOBS)
    raise ValueError(f"unknown answer type {kind!r}")


def _render(template: str, subject: str, answer: str) -> tuple[str, int]:
    """Fill a statement; return (sentence, offset of the answer inside it)."""
    article = "an" if answer[:1].lower() in "aeiou" else "a"
    values = {"s": subject, "a": answer, "a_article": article}
    head = template[: template.index("{a}")]
    sentence = template.format(**values)
    offset = len(head.format(**values))
    return sentence[0].upper() + sentence[1:], offset


@dataclass
class _Fact:
    relation: Relation
    subject: str
    answer: str
    sentence: str
    answer_offset: int  # inside `sentence`
    start: int = -1  # inside the context, once placed


@dataclass
class Paragraph:
    title: str
    context: str
    qas: list[dict]  # {"question", "answers": {"text", "answer_start"}, "relation", "phrasing"}
    entities: set[str] = field(default_factory=set)


def _distribution(total: int, groups: int) -> list[int]:
    return [total // groups + (1 if i < total % groups else 0) for i in range(groups)]


def _paragraph(rng: random.Random, names: NameRegistry, s: dict) -> Paragraph:
    n_facts, n_questions = s["facts_per_context"], s["questions_per_context"]
    entities: set[str] = set()

    def fresh(kind: str) -> str:
        value = _entity(kind, rng, names)
        entities.add(value)
        return value

    region = fresh("place")
    groups = min(max(1, n_facts // 3), len(RELATIONS))
    relations = rng.sample(RELATIONS, groups)
    facts: list[_Fact] = []
    used_values: set[str] = set()
    for relation, count in zip(relations, _distribution(n_facts, groups)):
        for _ in range(count):
            subject = fresh(relation.subject)
            while True:
                answer = _answer_value(relation.answer, rng, names)
                if answer not in used_values:
                    break
            used_values.add(answer)
            if relation.answer in ("person", "place"):
                entities.add(answer)
            sentence, offset = _render(rng.choice(relation.statements), subject, answer)
            facts.append(_Fact(relation, subject, answer, sentence, offset))
    rng.shuffle(facts)

    filler_order = rng.sample(FILLERS, len(FILLERS))  # each filler form at most once per paragraph (cycled if not)

    def filler() -> str:
        template = filler_order[len(body) % len(filler_order)]
        while True:
            year, number = str(rng.randint(1480, 1899)), str(rng.randint(120, 9800))
            if year not in used_values and number not in used_values:
                break
        used_values.update((year, number))
        values = {"year": year, "number": number}
        for slot, kind in (("place", "place"), ("place2", "place"), ("person", "person")):
            if "{" + slot + "}" in template:
                values[slot] = fresh(kind)
        return template.format(**values)

    def words() -> int:
        return sum(len((x.sentence if isinstance(x, _Fact) else x).split()) for x in body)

    # sentences: intro, then facts with filler interleaved; long paragraphs are padded well past 128 tokens
    body: list[Any] = list(facts)
    if rng.random() < s["long_context_frac"]:
        target = rng.randint(170, 240)
        while words() < target:
            body.insert(rng.randint(0, len(body)), filler())
    context = rng.choice(INTROS).format(r=region)
    for item in body:
        context += " "
        if isinstance(item, _Fact):
            item.start = len(context) + item.answer_offset
            context += item.sentence
        else:
            context += item

    # questions: distinct facts first; repeat facts (other phrasing) only when asked for more than there are
    order = rng.sample(range(len(facts)), len(facts))
    picks = [order[i % len(order)] for i in range(n_questions)]
    qas = []
    for fact_index in picks:
        fact = facts[fact_index]
        relation = fact.relation
        phrasing = rng.randrange(len(relation.questions))
        if rng.random() < s["unanswerable_frac"]:
            ghost = fresh(relation.subject)  # never written into the context (not even as part of a longer name)
            while any(part in context for part in ghost.split()):
                ghost = fresh(relation.subject)
            question = relation.questions[phrasing].format(s=ghost)
            answers = {"text": [], "answer_start": []}
        else:
            question = relation.questions[phrasing].format(s=fact.subject)
            answers = {"text": [fact.answer], "answer_start": [fact.start]}
        question = question[0].upper() + question[1:]
        qas.append({"question": question, "answers": answers, "relation": relation.name, "phrasing": phrasing})
    title = rng.choice(TITLES).format(r=region)
    return Paragraph(title, context, qas, entities)


def _unambiguous(paragraph: Paragraph) -> bool:
    """Every answer text occurs exactly once in the context (no second "1804" or a name inside a longer one)."""
    for qa in paragraph.qas:
        for text in qa["answers"]["text"]:
            if paragraph.context.count(text) != 1:
                return False
    return True


@dataclass
class GeneratedSplits:
    train: list[dict]
    dev: list[dict]
    train_entities: set[str]
    dev_entities: set[str]
    relations: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # id → (relation, phrasing) per split


def _get(cfg: Any, key: str) -> Any:
    """A key of a DictConfig, a dataclass or a plain dict."""
    return cfg[key] if isinstance(cfg, dict) else getattr(cfg, key)


def generator_settings(gen_cfg: Any) -> dict:
    """The settings that determine the generated set (cache_dir is where, not what)."""
    return {key: (float(_get(gen_cfg, key)) if "frac" in key else int(_get(gen_cfg, key))) for key in SETTING_KEYS}


def settings_key(settings: dict) -> str:
    blob = json.dumps({"version": GENERATOR_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _split(name: str, n_questions: int, rng: random.Random, names: NameRegistry, s: dict):
    records, entities, meta = [], set(), {}
    p = 0
    while len(records) < n_questions:
        for _attempt in range(50):
            paragraph = _paragraph(rng, names, s)
            if _unambiguous(paragraph):
                break
        else:  # pragma: no cover - would mean the value ranges above are far too small
            raise RuntimeError("could not generate an unambiguous paragraph")
        entities |= paragraph.entities
        for q, qa in enumerate(paragraph.qas):
            if len(records) == n_questions:
                break
            rid = f"gen-{name}-p{p:05d}-q{q}"
            records.append(
                {
                    "id": rid,
                    "title": paragraph.title,
                    "context": paragraph.context,
                    "question": qa["question"],
                    "answers": qa["answers"],
                }
            )
            meta[rid] = (qa["relation"], qa["phrasing"])
        p += 1
    return records, entities, meta


MAX_FACTS_PER_CONTEXT = 60  # beyond this the small answer vocabularies (16 colours...) run out of distinct values


def generate_records(settings: dict) -> GeneratedSplits:
    """Both splits, as flat records. Pure function of `settings` (and GENERATOR_VERSION)."""
    s = {k: settings[k] for k in SETTING_KEYS}
    if s["facts_per_context"] > MAX_FACTS_PER_CONTEXT:
        raise DataError(
            f"data.generated.facts_per_context={s['facts_per_context']} is too many; at most {MAX_FACTS_PER_CONTEXT}"
        )
    names = NameRegistry()  # shared: dev draws only words train never used
    train, train_entities, meta_train = _split("train", s["n_train"], random.Random(f"{s['seed']}:train"), names, s)
    dev, dev_entities, meta_dev = _split("dev", s["n_dev"], random.Random(f"{s['seed']}:dev"), names, s)
    return GeneratedSplits(train, dev, train_entities, dev_entities, {**meta_train, **meta_dev})


def _write_atomic(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def cache_folder(gen_cfg: Any, root: Path | None = None) -> Path:
    base = Path(_get(gen_cfg, "cache_dir"))
    if not base.is_absolute():
        base = (root or REPO_ROOT) / base
    return base / f"v{GENERATOR_VERSION}-{settings_key(generator_settings(gen_cfg))}"


def ensure_generated(gen_cfg: Any, root: Path | None = None) -> tuple[Path, Path]:
    """Write the generated set once (train.jsonl, dev.jsonl, settings.json) and return the two file paths."""
    folder = cache_folder(gen_cfg, root)
    train_path, dev_path = folder / "train.jsonl", folder / "dev.jsonl"
    if train_path.is_file() and dev_path.is_file():
        return train_path, dev_path
    folder.mkdir(parents=True, exist_ok=True)
    settings = generator_settings(gen_cfg)
    splits = generate_records(settings)
    _write_atomic(train_path, splits.train)
    _write_atomic(dev_path, splits.dev)
    meta = folder / "settings.json"
    tmp = meta.with_name(f".settings.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"generator_version": GENERATOR_VERSION, **settings}, indent=2) + "\n")
    os.replace(tmp, meta)
    return train_path, dev_path


def main(argv: list[str] | None = None) -> None:
    """`python -m experiments.data.generated [CONFIG.yaml ...] [key=value ...]`: write the set, show a sample."""

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(main.__doc__.split(": ", 1)[0].strip("`") + "\n\n" + __doc__.split("\n\n")[0])
        return
    files, overrides = split_args(argv)
    try:
        cfg = load_config(files, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    train_path, dev_path = ensure_generated(cfg.data.generated)
    print(f"train: {train_path}\ndev:   {dev_path}")
    with open(dev_path, encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    print(f"\n{first['context']}\n\nQ: {first['question']}\nA: {first['answers']['text']}")


if __name__ == "__main__":
    main()
