"""One QA record: the checks every source goes through, and the collector that raises or skips-and-counts.

A record, once checked, is the flat SQuAD shape
    {"id": str, "title": str, "context": str, "question": str, "answers": {"text": [str], "answer_start": [int]}}
with empty answer lists meaning "unanswerable". The same checks run on local files, hub sets and the generated set, so
a problem reads the same wherever it comes from. The question id is read from the field `data.id_field` names ("id"
for SQuAD and KorQuAD, "guid" for KLUE-MRC) and stored as "id".

Every string must be valid Unicode: JSON can spell a lone UTF-16 surrogate ("\ud83d"), which Python reads into a str
but Arrow (and so `datasets`) cannot store; such a record is a record-level problem like any other.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Any

from datasets import Dataset, Features, List, Value

from .errors import STRICT_HINT, DataError, logger, one_line

# The columns of every examples Dataset this package returns, in this order.
EXAMPLE_FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
    }
)
REQUIRED_FIELDS = ("id", "context", "question", "answers")
MAX_WARNINGS_PER_SOURCE = 20  # per-record warning lines; a summary line always follows
# Where the question id usually lives, for the hint when data.id_field names a field the records do not have.
ID_FIELD_CANDIDATES = ("id", "guid", "qid", "qas_id", "question_id")


class RecordProblem(Exception):
    """Raised inside the checks; `reason` is the short key counted in stats["skip_reasons"]."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _answer_lists(answers: Any) -> tuple[list, list]:
    """Accept {"text": [...], "answer_start": [...]} or [{"text", "answer_start"}, ...]; return the two lists."""
    if isinstance(answers, dict):
        if "text" not in answers or "answer_start" not in answers:
            raise RecordProblem("bad_answers", "field 'answers' must have keys 'text' and 'answer_start'")
        texts, starts = answers["text"], answers["answer_start"]
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise RecordProblem("bad_answers", "answers 'text' and 'answer_start' must be lists")
        if len(texts) != len(starts):
            raise RecordProblem("bad_answers", f"answers has {len(texts)} texts but {len(starts)} answer_start values")
        return texts, starts
    if isinstance(answers, list):
        texts, starts = [], []
        for i, ans in enumerate(answers):
            if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
                raise RecordProblem("bad_answers", f"answer {i} must be an object with 'text' and 'answer_start'")
            texts.append(ans["text"])
            starts.append(ans["answer_start"])
        return texts, starts
    raise RecordProblem("wrong_type", f"field 'answers' must be an object or a list, got {type(answers).__name__}")


def _normalisation_hint(context: str, text: str) -> str:
    """The likely cause of an answer_start mismatch when the context and the answer are in different Unicode
    normalisation forms (NFD spells 한 as three code points, NFC as one, so offsets of one form miss in the other):
    the answer is in the context once both are NFC, and one of them is not NFC."""
    nfc_context, nfc_text = unicodedata.normalize("NFC", context), unicodedata.normalize("NFC", text)
    if (nfc_context != context or nfc_text != text) and nfc_text in nfc_context:
        return (
            "; likely cause: Unicode normalisation (the context and the answer are in different forms, NFC/NFD, "
            "so answer_start counts other code points): normalise the file to NFC (unicodedata.normalize('NFC', "
            "...) on every string) and recompute answer_start"
        )
    return ""


def _missing_id(record: dict, id_field: str) -> RecordProblem:
    """The error for a record without its id field; it names data.id_field and, if it can, the value to set."""
    others = [name for name in ID_FIELD_CANDIDATES if name != id_field and record.get(name) is not None]
    hint = (
        f"; the record has {others[0]!r}: set data.id_field={others[0]}"
        + (" (KLUE-MRC: add configs/data/klue_mrc.yaml, which also sets its metric)" if others[0] == "guid" else "")
        if others
        else "; set data.id_field to the field that holds the question id"
    )
    return RecordProblem(
        "missing_field", f"missing field {id_field!r} (the question id, data.id_field={id_field}){hint}"
    )


def _valid_unicode(name: str, value: str) -> None:
    """Raise RecordProblem when `value` holds a lone surrogate (valid as a JSON escape, not as Unicode text)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RecordProblem(
            "invalid_unicode",
            f"field {name} holds a lone UTF-16 surrogate {value[err.start]!r} at character {err.start} "
            "(valid JSON escape, not valid Unicode text)",
        ) from None


def check_record(record: Any, *, default_title: str = "", id_field: str = "id") -> dict:
    """Validate one flat record and return it normalised; raise RecordProblem on the first thing that is wrong.

    The question id is read from `record[id_field]` (data.id_field) and returned as "id"; other fields the record may
    carry (question_type, plausible_answers, news_category, ...) are dropped. `is_impossible`, when present, must be
    a boolean; when true the answers are ignored (the question is unanswerable; KLUE and SQuAD v2 keep plausible
    answers elsewhere, and the hub's KLUE-MRC copies them into `answers`).
    """
    if not isinstance(record, dict):
        raise RecordProblem("not_an_object", f"record must be a JSON object, got {type(record).__name__}")
    impossible = record.get("is_impossible")
    if impossible is not None and not isinstance(impossible, bool):
        raise RecordProblem("wrong_type", f"field 'is_impossible' must be true or false, got {impossible!r}")
    impossible = impossible is True
    if record.get(id_field) is None:
        raise _missing_id(record, id_field)
    for name in REQUIRED_FIELDS[1:]:
        if record.get(name) is None and not (name == "answers" and impossible):
            raise RecordProblem("missing_field", f"missing field {name!r}")
    rid = record[id_field]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise RecordProblem("wrong_type", f"field {id_field!r} (the id) must be a string, got {type(rid).__name__}")
    rid = str(rid)
    if not rid.strip():
        raise RecordProblem("missing_field", f"empty id (field {id_field!r})")
    title = record.get("title", default_title)
    if title is None:
        title = default_title
    for name, value in (("title", title), ("context", record["context"]), ("question", record["question"])):
        if not isinstance(value, str):
            raise RecordProblem("wrong_type", f"field {name!r} must be a string, got {type(value).__name__}")
    for name, value in (
        (repr(id_field), rid),
        ("'title'", title),
        ("'context'", record["context"]),
        ("'question'", record["question"]),
    ):
        _valid_unicode(name, value)
    context, question = record["context"], record["question"]
    if not context.strip():
        raise RecordProblem("empty_context", "empty context")
    if not question.strip():
        raise RecordProblem("empty_question", "empty question")

    if impossible:
        texts, starts = [], []  # SQuAD v2 unanswerable: plausible_answers (if any) are ignored on purpose
    else:
        texts, starts = _answer_lists(record["answers"])
    for i, (text, start) in enumerate(zip(texts, starts)):
        if not isinstance(text, str):
            raise RecordProblem("wrong_type", f"answer {i} text must be a string, got {type(text).__name__}")
        if not text:
            raise RecordProblem("bad_answers", f"answer {i} has empty text")
        _valid_unicode(f"answer {i} text", text)
        if isinstance(start, bool) or not isinstance(start, int):
            raise RecordProblem("wrong_type", f"answer {i} answer_start must be an integer, got {start!r}")
        found = context[start : start + len(text)] if start >= 0 else ""
        if found != text:
            raise RecordProblem(
                "answer_mismatch",
                f"answer {i} answer_start={start} does not point at the answer text: "
                f"context[{start}:{start + len(text)}]={_short(found)} != {_short(text)}"
                + _normalisation_hint(context, text),
            )
    return {
        "id": rid,
        "title": title,
        "context": context,
        "question": question,
        "answers": {"text": list(texts), "answer_start": list(starts)},
    }


class RecordCollector:
    """Collects checked records of one source (a file or a hub split).

    strict=True: the first problem raises DataError("<source>: <where>: <problem>; data.strict=false skips such
    records") (the same hint as the tokenising faults of experiments.data.loading).
    strict=False: the record is skipped, counted by reason and logged as a warning on logger "experiments.data".
    """

    def __init__(self, source: str, strict: bool, id_field: str = "id"):
        self.source = source
        self.strict = strict
        self.id_field = id_field
        self.records: list[dict] = []
        self.reasons: Counter = Counter()
        self._seen: dict[str, str] = {}
        self._warned = 0
        self.first_problem: str | None = None  # the first skipped record's line, for "none is usable" errors

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def problem(self, where: str, reason: str, message: str) -> None:
        line = one_line(f"{self.source}: {where}: {message}")
        if self.strict:
            raise DataError(f"{line}; {STRICT_HINT}")
        self.reasons[reason] += 1
        if self.first_problem is None:
            self.first_problem = f"{where}: {one_line(message)}"
        if self._warned < MAX_WARNINGS_PER_SOURCE:
            logger.warning("skipped record: %s", line)
        elif self._warned == MAX_WARNINGS_PER_SOURCE:
            logger.warning("%s: more skipped records; only the first %d are listed", self.source, self._warned)
        self._warned += 1

    def add(self, where: str, record: Any, *, default_title: str = "") -> None:
        rid = record.get(self.id_field) if isinstance(record, dict) else None
        named = f"{where} (id {str(rid)!r})" if isinstance(rid, (str, int)) and not isinstance(rid, bool) else where
        try:
            checked = check_record(record, default_title=default_title, id_field=self.id_field)
        except RecordProblem as p:
            self.problem(named, p.reason, p.message)
            return
        if checked["id"] in self._seen:
            first = self._seen[checked["id"]]
            self.problem(named, "duplicate_id", f"duplicate id {checked['id']!r} (first seen at {first})")
            return
        self._seen[checked["id"]] = where
        self.records.append(checked)

    def where_of_ids(self) -> dict[str, str]:
        """{id: "<source>: <where>"} of the records kept."""
        return {rid: f"{self.source}: {where}" for rid, where in self._seen.items()}

    def nothing_usable(self) -> DataError:
        """The error for a source whose every record was skipped: counts by reason and the first problem."""
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items()))
        return DataError(
            one_line(
                f"{self.source}: none of its {self.skipped} records is usable ({kinds}); the first: "
                f"{self.first_problem}"
            )
        )

    def summary(self) -> None:
        """Log one line per source that lost records (strict=False only)."""
        if self.skipped:
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items()))
            logger.warning(
                "%s: skipped %d malformed record(s) and kept %d (%s)",
                self.source,
                self.skipped,
                len(self.records),
                kinds,
            )


def _to_dataset(records: list[dict]) -> Dataset:
    columns = {name: [r[name] for r in records] for name in EXAMPLE_FEATURES}
    return Dataset.from_dict(columns, features=EXAMPLE_FEATURES)


def records_to_dataset(records: list[dict], limit: int | None = None, *, source: str = "examples") -> Dataset:
    """Checked records → a Dataset with EXAMPLE_FEATURES; `limit` keeps the first N (deterministic).

    `check_record` rules out what Arrow is known to refuse; should Arrow still refuse something, the record it refuses
    is looked up on its own and named in a one-line DataError ("<source>: id '...': ..."), never a bare library error.
    """
    if limit is not None:
        records = records[:limit]
    try:
        return _to_dataset(records)
    except Exception as err:  # pyarrow.ArrowInvalid, UnicodeEncodeError, OverflowError, ...
        for record in records:
            try:
                _to_dataset([record])
            except Exception as one:  # noqa: BLE001 - reported as one line below
                raise DataError(
                    one_line(
                        f"{source}: id {record['id']!r}: the record cannot be stored "
                        f"({type(one).__name__}: {str(one)[:200]})"
                    )
                ) from None
        raise DataError(
            one_line(f"{source}: the examples cannot be stored ({type(err).__name__}: {str(err)[:200]})")
        ) from err
