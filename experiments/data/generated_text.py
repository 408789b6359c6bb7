"""The words and sentence templates of the generated QA set (experiments.data.generated draws from them): name
syllables, the answer vocabularies, the relations with their statement and question forms, filler sentences,
paragraph intros and titles. Changing any of them changes the generated data: bump GENERATOR_VERSION there."""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------------- names
# Short, pronounceable syllables keep names at 2-4 word pieces, so six facts still fit one 128-token window.
ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "st",
    "th",
    "sh",
    "tr",
    "j",
    "w",
)


NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei")


CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "k")


# ------------------------------------------------------------------------------------------------------ relations
COLOURS = (
    "crimson",
    "pale blue",
    "dark green",
    "amber",
    "violet",
    "silver",
    "ochre",
    "scarlet",
    "teal",
    "grey",
    "golden yellow",
    "white",
    "black",
    "indigo",
    "rust brown",
    "sea green",
)


JOBS = (
    "glassblower",
    "rope maker",
    "cartographer",
    "beekeeper",
    "clockmaker",
    "weaver",
    "stonemason",
    "shipwright",
    "herbalist",
    "bookbinder",
    "blacksmith",
    "potter",
    "tanner",
    "lamplighter",
    "astronomer",
    "miller",
    "cooper",
    "salt merchant",
)


DEVICE_ADJECTIVES = (
    "brass",
    "folding",
    "steam",
    "humming",
    "copper",
    "spring",
    "floating",
    "mirrored",
    "clockwork",
    "tidal",
    "glass",
    "wind",
)


DEVICE_NOUNS = (
    "loom",
    "lantern",
    "telescope",
    "compass",
    "pump",
    "kettle",
    "sextant",
    "bellows",
    "press",
    "plough",
    "barometer",
    "crane",
)


@dataclass(frozen=True)
class Relation:
    name: str
    subject: str  # entity kind of the subject: person, town, ship, guild, bridge
    answer: str  # answer type: year, person, place, device, colour, number, length, job
    statements: tuple[str, ...]  # "{s}" subject, "{a}" answer, "{a_article}" "a"/"an" before the answer
    questions: tuple[str, ...]  # "{s}" subject


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "born",
        "person",
        "year",
        (
            "{s} was born in {a}.",
            "Born in {a}, {s} grew up far from the sea.",
            "The parish book records that {s} was born in {a}.",
        ),
        (
            "In which year was {s} born?",
            "When was {s} born?",
            "What year saw the birth of {s}?",
            "{s} was born in what year?",
        ),
    ),
    Relation(
        "died",
        "person",
        "year",
        ("{s} died in {a}.", "{s} passed away in the winter of {a}.", "In {a} the death of {s} was mourned."),
        ("In which year did {s} die?", "When did {s} die?", "What year did {s} pass away?"),
    ),
    Relation(
        "founded",
        "town",
        "person",
        (
            "The town of {s} was founded by {a}.",
            "{a} founded the town of {s}.",
            "{s} was established by {a} on the bank of a river.",
        ),
        ("Who founded {s}?", "Who was the founder of {s}?", "By whom was the town of {s} established?"),
    ),
    Relation(
        "teacher",
        "person",
        "person",
        ("{s} studied under {a}.", "{a} was the teacher of {s}.", "{s} learned the craft from {a}."),
        ("Who taught {s}?", "Who was the teacher of {s}?", "Under whom did {s} study?"),
    ),
    Relation(
        "home_port",
        "ship",
        "place",
        (
            "The ship {s} sailed from its home port of {a}.",
            "{a} was the home port of the ship {s}.",
            "The ship {s} was based in the harbour of {a}.",
        ),
        (
            "What is the home port of the ship {s}?",
            "From which port did the {s} sail?",
            "Where was the ship {s} based?",
        ),
    ),
    Relation(
        "lives_in",
        "person",
        "place",
        ("{s} lives in {a}.", "{s} has made a home in {a}.", "These days {s} lives in the town of {a}."),
        ("Where does {s} live?", "In which town does {s} live?", "Which town is home to {s}?"),
    ),
    Relation(
        "invented",
        "person",
        "device",
        ("{s} invented the {a}.", "The {a} was invented by {s}.", "{s} is remembered for inventing the {a}."),
        ("What did {s} invent?", "What was invented by {s}?", "Which device is {s} known for inventing?"),
    ),
    Relation(
        "banner",
        "guild",
        "colour",
        (
            "The banner of the {s} guild is {a}.",
            "Members of the {s} guild carry a {a} banner.",
            "The {s} guild chose {a} for its banner.",
        ),
        (
            "What colour is the banner of the {s} guild?",
            "Which colour does the {s} guild's banner have?",
            "The banner of the {s} guild is what colour?",
        ),
    ),
    Relation(
        "population",
        "town",
        "number",
        (
            "The village of {s} has {a} inhabitants.",
            "About {a} people live in the village of {s}.",
            "{s} counted {a} residents at the last census.",
        ),
        ("How many people live in {s}?", "What is the population of {s}?", "How many inhabitants does {s} have?"),
    ),
    Relation(
        "occupation",
        "person",
        "job",
        (
            "{s} works as {a_article} {a}.",
            "{s} earns a living as {a_article} {a}.",
            "By trade, {s} is {a_article} {a}.",
        ),
        ("What is the profession of {s}?", "What does {s} do for a living?", "What job does {s} have?"),
    ),
    Relation(
        "bridge_length",
        "bridge",
        "length",
        (
            "The {s} Bridge is {a} long.",
            "The {s} Bridge stretches {a} across the river.",
            "Engineers measured the {s} Bridge at {a}.",
        ),
        (
            "How long is the {s} Bridge?",
            "What is the length of the {s} Bridge?",
            "How many metres does the {s} Bridge span?",
        ),
    ),
)


# Filler: fictional sentences with their own names, years and numbers (same-type distractors, never asked about).
FILLERS = (
    "In {year}, heavy rain flooded the lower streets of {place}.",
    "Travellers often described {place} as quiet and green.",
    "A market was held every autumn near {place}.",
    "{person} wrote a long letter about the harvest of {year}.",
    "The road between {place} and {place2} was repaired in {year}.",
    "Nobody in {place} remembers a colder winter than that of {year}.",
    "Old maps show a small chapel on the hill above {place}.",
    "{person} kept a diary of the weather for many years.",
    "Fishermen from {place} sold their catch in the square every morning.",
    "The council of {place} met twice a year to settle disputes.",
    "Songs about {person} are still sung in the taverns of {place}.",
    "A fire destroyed the old mill of {place} in {year}.",
    "Some {number} sheep grazed on the meadows around {place}.",
    "The annual fair attracted visitors from as far away as {place}.",
    "{person} once walked from {place} to {place2} in a single day.",
    "The well in the centre of {place} never ran dry, not even in {year}.",
    "Children in {place} learn the old counting rhymes before they can read.",
    "A stone tablet from {year} lists {number} names of forgotten sailors.",
)


INTROS = (
    "These notes were collected in the valley of {r}.",
    "The following account comes from the archive of {r}.",
    "Scholars of {r} wrote down the following facts.",
    "What follows is taken from an old chronicle of {r}.",
)


TITLES = ("Chronicle of {r}", "Notes on {r}", "The archive of {r}", "Records from {r}")
