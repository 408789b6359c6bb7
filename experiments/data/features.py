"""Examples → tokenised windows with start/end labels (the run_qa recipe, written out).

One example becomes one or more features: the question first, then as much context as fits; a long context is cut
into windows of max_seq_length tokens that overlap by doc_stride tokens. The labels are token indices of the answer's
first and last token inside the window, or 0 (the [CLS] token) when the answer is not wholly inside that window or the
question has no answer. Every feature keeps the `example_id` of the example it comes from (training counts examples
by it); eval features also keep `offset_mapping` (character spans in the context, None for question/special/padding
tokens so post-processing can only pick context spans).

A question is cut to `question_token_limit` tokens, so the context always has more room in a window than
doc_stride: with less, the fast tokenizer cannot advance its windows and panics (a Rust PanicException).

A record the tokenizer cannot turn into windows (any exception the library raises, or a context with no token the
tokenizer keeps, such as only zero-width characters) makes `prepare_*_features` raise TokenisationFaults, a
DataError that lists every such example by id; `loading.prepare_features` names their file and record, or skips them.

Tokenising is cached: `Dataset.map` writes an Arrow file under .cache/features/ named by a hash of everything that
changes the result, and a rerun loads that file instead of tokenising again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value

from ..provenance import REPO_ROOT
from .errors import DataError, one_line

# bump whenever the features for the same inputs change (2: questions cut to leave stride room; 3: train features
# keep example_id)
FEATURES_VERSION = 3
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the model reads of a feature
LABELS = ("start_positions", "end_positions")  # token indices of the answer span ([CLS] = 0: no answer here)
FEATURE_COLUMNS = MODEL_INPUTS + LABELS  # the columns held as tensors for training and evaluation


def _default_cache_dir() -> Path:
    return REPO_ROOT / ".cache" / "features"


@dataclass
class Fault:
    """One example the tokenizer could not turn into windows; `reason` is the key counted in skip_reasons."""

    example_id: str
    reason: str
    message: str


class TokenisationFaults(DataError):
    """Raised by prepare_*_features when some examples cannot be tokenised; `faults` lists every one of them."""

    def __init__(self, kind: str, faults: list[Fault]):
        first = faults[0]
        more = f" ({len(faults) - 1} more)" if len(faults) > 1 else ""
        super().__init__(one_line(f"{kind} example id {first.example_id!r}: {first.message}{more}"))
        self.faults = faults


class _RecordFault(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def question_token_limit(tokenizer: Any, max_seq_length: int, doc_stride: int) -> int:
    """The most question tokens a window may hold: at most half the window, and few enough that the context keeps
    more room than doc_stride, i.e. max_seq_length - special tokens - question tokens > doc_stride (the fast
    tokenizer's own condition for overflowing windows; it panics otherwise). Raises DataError naming
    data.doc_stride when not even one question token fits."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    limit = min(max_seq_length // 2, max_seq_length - special - doc_stride - 1)
    if limit < 1:
        raise DataError(
            f"data.doc_stride={doc_stride} leaves no room for a question: a window of "
            f"data.max_seq_length={max_seq_length} tokens holds {special} special tokens and needs more "
            f"than doc_stride tokens of context; lower data.doc_stride"
        )
    return limit


def _question_lengths(questions: list[str], tokenizer: Any) -> list:
    return tokenizer([q.lstrip() for q in questions], add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]


def count_long_questions(dataset: Dataset, tokenizer: Any, limit: int) -> int:
    """How many questions of `dataset` have more than `limit` tokens (and so are cut when tokenised)."""
    return sum(len(offsets) > limit for offsets in _question_lengths(list(dataset["question"]), tokenizer))


def _shorten_long_questions(questions: list[str], tokenizer: Any, limit: int) -> list[str]:
    """Cut a question to `limit` tokens: with truncation="only_second" a question longer than the window is an error,
    and one that leaves the context no more room than doc_stride makes the tokenizer panic."""
    out = []
    for question, offsets in zip(questions, _question_lengths(questions, tokenizer)):
        out.append(question[: offsets[limit - 1][1]] if len(offsets) > limit else question)
    return out


def _context_span(sequence_ids: list) -> tuple[int, int]:
    """First and last token index of the context (sequence id 1) in one window."""
    if 1 not in sequence_ids:
        raise _RecordFault(
            "no_context_tokens",
            "the context has no token this tokenizer keeps (only characters it "
            "drops, e.g. zero-width, control or combining marks)",
        )
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return first, last


def _label(offsets: list, first: int, last: int, answers: dict) -> tuple[int, int]:
    """Token indices (start, end) of the first gold answer in this window; (0, 0) if absent or cut."""
    if not answers["text"]:
        return 0, 0
    char_start = answers["answer_start"][0]
    char_end = char_start + len(answers["text"][0])
    if offsets[first][0] > char_start or offsets[last][1] < char_end:
        return 0, 0  # the window starts after the answer begins, or ends before it ends
    start = first
    while start <= last and offsets[start][1] <= char_start:  # first token that ends after the answer begins
        start += 1
    end = last
    while end >= first and offsets[end][0] >= char_end:  # last token that begins before the answer ends
        end -= 1
    if start > end:  # the answer is only whitespace the tokenizer dropped; treat as absent
        return 0, 0
    return start, end


def _tokenise(batch: dict, tokenizer: Any, max_seq_length: int, doc_stride: int, kind: str) -> dict:
    limit = question_token_limit(tokenizer, max_seq_length, doc_stride)
    questions = _shorten_long_questions([q.lstrip() for q in batch["question"]], tokenizer, limit)
    encoded = tokenizer(
        questions,
        batch["context"],
        truncation="only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    sample_of = encoded.pop("overflow_to_sample_mapping")
    all_offsets = encoded.pop("offset_mapping")
    starts, ends, example_ids, kept_offsets = [], [], [], []
    for i, offsets in enumerate(all_offsets):
        sequence_ids = encoded.sequence_ids(i)
        example = sample_of[i]
        first, last = _context_span(sequence_ids)
        start, end = _label(offsets, first, last, batch["answers"][example])
        starts.append(start)
        ends.append(end)
        example_ids.append(batch["id"][example])
        if kind == "eval":
            kept_offsets.append([tuple(o) if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)])
    wanted = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names:
        wanted.append("token_type_ids")
    out = {name: encoded[name] for name in wanted}
    out["start_positions"] = starts
    out["end_positions"] = ends
    out["example_id"] = example_ids
    if kind == "eval":
        out["offset_mapping"] = kept_offsets
    return out


def feature_schema(tokenizer: Any, kind: str) -> Features:
    """Column types: int32 token inputs (embeddings take int32 indices; half the disk of int64), int64 labels."""
    columns = {"input_ids": List(Value("int32")), "attention_mask": List(Value("int32"))}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        columns["token_type_ids"] = List(Value("int32"))
    columns["start_positions"] = Value("int64")
    columns["end_positions"] = Value("int64")
    columns["example_id"] = Value("string")
    if kind == "eval":
        columns["offset_mapping"] = List(List(Value("int32")))
    return Features(columns)


def features_cache_key(dataset: Dataset, tokenizer: Any, max_seq_length: int, doc_stride: int, kind: str) -> str:
    """Hash of everything that changes the features: the examples, the tokenizer, the window, the kind, the code."""
    parts = {
        "dataset": dataset._fingerprint,  # datasets' content/transform fingerprint of the examples
        "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "max_seq_length": int(max_seq_length),
        "doc_stride": int(doc_stride),
        "kind": kind,
        "version": FEATURES_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _prepare(
    dataset: Dataset,
    tokenizer: Any,
    max_seq_length: int,
    doc_stride: int,
    kind: str,
    cache_dir: str | Path | None,
    use_cache: bool,
) -> Dataset:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} is not a fast tokenizer; "
            "offsets (needed for QA labels) come only from fast tokenizers"
        )
    if doc_stride >= max_seq_length // 2:
        raise DataError(f"doc_stride={doc_stride} must be < max_seq_length/2 ({max_seq_length // 2})")
    question_token_limit(tokenizer, max_seq_length, doc_stride)  # a window with no room is a config error, said once
    function = functools.partial(
        _tokenise, tokenizer=tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride, kind=kind
    )
    key = features_cache_key(dataset, tokenizer, max_seq_length, doc_stride, kind)
    kwargs: dict[str, Any] = {
        "batched": True,
        "remove_columns": dataset.column_names,
        "new_fingerprint": key,
        "features": feature_schema(tokenizer, kind),
        "desc": f"tokenising {kind} examples",
    }
    if use_cache:
        folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        kwargs.update(cache_file_name=str(folder / f"{kind}-{key}.arrow"), load_from_cache_file=True)
    else:
        kwargs.update(keep_in_memory=True, load_from_cache_file=False)
    try:
        return dataset.map(function, **kwargs)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:  # noqa: BLE001 - a Rust panic is a BaseException (pyo3 PanicException)
        faults = _find_faults(dataset, function)
        if not faults:
            raise  # not caused by a record (memory, disk, a broken tokenizer): the caller records the failure
        raise TokenisationFaults(kind, faults) from None


_SCAN_CHUNK = 256


def _find_faults(dataset: Dataset, function: Any) -> list[Fault]:
    """Tokenise `dataset` again in chunks, and the examples of a failing chunk one by one; every example that fails
    on its own is a Fault. Only runs after a failed map, so its cost (one more pass) is paid only then."""
    faults = []
    for begin in range(0, len(dataset), _SCAN_CHUNK):
        chunk = dataset[begin : begin + _SCAN_CHUNK]
        if _fails(function, chunk) is None:
            continue
        for offset, example_id in enumerate(chunk["id"]):
            error = _fails(function, {name: values[offset : offset + 1] for name, values in chunk.items()})
            if isinstance(error, _RecordFault):
                faults.append(Fault(str(example_id), error.reason, error.message))
            elif error is not None:
                faults.append(
                    Fault(
                        str(example_id),
                        "tokenizer_error",
                        f"the tokenizer failed on this record ({type(error).__name__}: {one_line(error)[:200]})",
                    )
                )
    return faults


def _fails(function: Any, batch: dict) -> BaseException | None:
    try:
        function(batch)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # noqa: BLE001 - see _prepare
        return err
    return None


def prepare_train_features(
    dataset: Dataset,
    tokenizer: Any,
    max_seq_length: int,
    doc_stride: int,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> Dataset:
    """Examples → train features: input_ids, attention_mask, token_type_ids (if the tokenizer has them),
    start_positions, end_positions, example_id."""
    return _prepare(dataset, tokenizer, max_seq_length, doc_stride, "train", cache_dir, use_cache)


def prepare_eval_features(
    dataset: Dataset,
    tokenizer: Any,
    max_seq_length: int,
    doc_stride: int,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> Dataset:
    """Examples → eval features: the train columns plus offset_mapping (None outside the context)."""
    return _prepare(dataset, tokenizer, max_seq_length, doc_stride, "eval", cache_dir, use_cache)
