"""Local SQuAD-format files → checked records.

Three layouts are recognised from the content (the suffix only breaks ties):
  nested   the original SQuAD JSON: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
           "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}   (v1.1 and v2.0)
  flat     a JSON list of flat records, or {"data": [flat records]}
  jsonl    one flat record per line
A flat record is {"id", "title"?, "context", "question", "answers": {"text": [...], "answer_start": [...]}}.
The question id is read from the field named by `id_field` (data.id_field) in every layout: the official KLUE-MRC JSON
is nested SQuAD with the id in "guid" (and question_type, is_impossible, plausible_answers beside it).

Problems with one record (a bad JSON line, a missing field, an answer_start that misses its text, an empty context or
question, undecodable bytes on a line) raise DataError under strict mode and are skipped + counted otherwise. Problems
with the whole file (not JSON at all, not UTF-8, no records) always raise.
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import DataError, one_line
from .records import RecordCollector

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _line_of_byte(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _first_line_is_object(raw: bytes) -> bool:
    """True when the first non-blank line is, on its own, a JSON object (the mark of JSON lines)."""
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            return isinstance(json.loads(line.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return False
    return False


def _jsonl_records(raw: bytes, collector: RecordCollector) -> None:
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            collector.problem(where, "undecodable", f"undecodable bytes (not UTF-8) at byte {err.start} of the line")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            collector.problem(where, "malformed_json", f"malformed JSON ({err.msg} at column {err.colno})")
            continue
        except RecursionError:
            collector.problem(where, "malformed_json", "malformed JSON (nested too deeply to parse)")
            continue
        collector.add(where, record)


def _flat_records(items: list, collector: RecordCollector, where: str) -> None:
    """`where` is a format string for the record's position, e.g. "record {}" or "data[{}]"."""
    for index, record in enumerate(items):
        collector.add(where.format(index), record)


def _nested_records(articles: list, collector: RecordCollector) -> None:
    """Each question is its `qas` object (id field, question, answers, is_impossible, ... as the file has them) plus
    the paragraph's context and the article's title."""
    for a, article in enumerate(articles):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            collector.problem(f"data[{a}]", "bad_structure", "article must be an object with a 'paragraphs' list")
            continue
        title = article.get("title") or ""
        for p, paragraph in enumerate(article["paragraphs"]):
            where_p = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                collector.problem(where_p, "bad_structure", "paragraph must be an object with a 'qas' list")
                continue
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph["qas"]):
                where = f"{where_p}.qas[{q}]"
                if not isinstance(qa, dict):
                    kind = type(qa).__name__
                    collector.problem(where, "not_an_object", f"question must be a JSON object, got {kind}")
                    continue
                collector.add(where, {**qa, "title": title, "context": context}, default_title=title)


def _document_records(doc: Any, collector: RecordCollector, path: str) -> None:
    """A parsed JSON document: nested SQuAD, a list of flat records, {"data": [flat]}, or one flat record."""
    if isinstance(doc, list):
        _flat_records(doc, collector, "record {}")
        return
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        items = doc["data"]
        if any(isinstance(item, dict) and "paragraphs" in item for item in items):
            _nested_records(items, collector)
        else:
            _flat_records(items, collector, "data[{}]")
        return
    if isinstance(doc, dict) and ("question" in doc or "context" in doc):
        collector.add("line 1", doc)  # a JSON-lines file with a single record
        return
    shape = type(doc).__name__ if not isinstance(doc, dict) else "an object with keys " + ", ".join(sorted(doc)[:6])
    raise DataError(
        f"{path}: not a SQuAD-format file: expected nested SQuAD JSON ({{'data': [articles]}}), a list of flat "
        f"records or JSON lines, got {shape}"
    )


def read_squad_file(
    path: str | Path, *, strict: bool = True, id_field: str = "id", where: dict | None = None
) -> tuple[list[dict], Counter]:
    """Read one local SQuAD-format file. Returns (checked records, Counter of skip reasons).

    id_field: the field that holds the question id (data.id_field). where: if a dict is given, it is filled with
    {id: "<file>: <line or JSON path>"} for every kept record (used to name a record found faulty later, e.g. while
    tokenising). Raises DataError (one line: file, record, problem) on a whole-file problem, or on the first
    record-level problem when strict.
    """
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{name}: cannot read the file ({one_line(err.strerror or err)})") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    collector = RecordCollector(name, strict, id_field)

    as_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    if not as_jsonl:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if not _first_line_is_object(raw):
                raise DataError(
                    f"{name}: undecodable bytes (not UTF-8) at byte {err.start} (line {_line_of_byte(raw, err.start)});"
                    " the file must be UTF-8 encoded"
                ) from None
            as_jsonl = True  # JSON lines with a bad line: that line is the record's problem
        else:
            if not text.strip():
                raise DataError(f"{name}: the file is empty")
            try:
                doc = json.loads(text)
            except RecursionError:
                raise DataError(f"{name}: not valid JSON (nested too deeply to parse)") from None
            except json.JSONDecodeError as err:
                lines = [line for line in raw.splitlines() if line.strip()]
                if len(lines) > 1 and _first_line_is_object(raw):
                    as_jsonl = True
                else:
                    raise DataError(
                        f"{name}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
                    ) from None
            else:
                _document_records(doc, collector, name)
    if as_jsonl:
        _jsonl_records(raw, collector)

    if not collector.records:
        if collector.skipped:
            raise collector.nothing_usable()
        raise DataError(f"{name}: the file holds no records")
    collector.summary()
    if where is not None:
        where.update(collector.where_of_ids())
    return collector.records, collector.reasons
