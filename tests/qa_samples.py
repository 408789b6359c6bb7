"""Small real-shaped MRC files (made-up text, the real structure of each set), written by the tests into tmp folders.

- KLUE-MRC: nested SQuAD-style JSON with the id in `guid`, plus `question_type`, `is_impossible` and, for unanswerable
  questions, `plausible_answers` (the official klue-mrc-v1.1_*.json layout; article fields `source`, `news_category`).
- SQuAD v2.0: nested JSON with `is_impossible`, empty `answers` and `plausible_answers` for unanswerable questions.
- KorQuAD 1.0: nested SQuAD v1.1 layout with Korean text and `id`.
answer_start is computed from the text, never typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path


def _qa(
    context: str,
    id_field: str,
    qid: str,
    question: str,
    answer: str | None,
    *,
    impossible=None,
    plausible: str | None = None,
    question_type=None,
    answers=None,
) -> dict:
    qa = {id_field: qid, "question": question}
    texts = answers if answers is not None else ([answer] if answer else [])
    qa["answers"] = [{"text": t, "answer_start": context.index(t)} for t in texts]
    if impossible is not None:
        qa["is_impossible"] = impossible
    if plausible:
        qa["plausible_answers"] = [{"text": plausible, "answer_start": context.index(plausible)}]
    if question_type is not None:
        qa["question_type"] = question_type
    return qa


# ----------------------------------------------------------------------------------------------------------- KLUE
KLUE_TRAIN = [
    (
        "하늘마을",
        "가상의 도시 하늘마을은 1887년 박서진이 세웠다. 마을 한가운데에는 《푸른 종》이라는 종탑이 있고, "
        "종지기 이도윤은 매일 아침 여섯 시에 종을 울린다. 하늘마을의 특산물은 은빛 배이다.",
        [
            ("klue-mrc-v1_train_00001", "하늘마을을 세운 사람은?", "박서진", 1, None),
            ("klue-mrc-v1_train_00002", "마을 한가운데 있는 종탑의 이름은?", "《푸른 종》", 2, None),
            ("klue-mrc-v1_train_00003", "하늘마을의 인구는 몇 명인가?", None, 3, "하늘마을"),
        ],
    ),
    (
        "김하람",
        "조선 후기의 화가 김하람은 〈겨울 강〉이라는 그림으로 이름을 알렸다. 그는 평생 열두 점의 그림만 "
        "남겼으며, 그중 다섯 점이 국립 가상미술관에 있다.",
        [
            ("klue-mrc-v1_train_00004", "김하람이 이름을 알린 그림은?", "〈겨울 강〉", 1, None),
            ("klue-mrc-v1_train_00005", "김하람이 남긴 그림은 모두 몇 점인가?", "열두 점", 2, None),
            ("klue-mrc-v1_train_00006", "김하람의 스승은 누구인가?", None, 3, "김하람"),
        ],
    ),
]
KLUE_DEV = [
    (
        "별빛",
        "2031년 가상전자는 ‘별빛 740’이라는 휴대전화를 내놓았다. 이 전화기의 배터리는 이틀 동안 간다. "
        "출시 행사는 부산의 해운홀에서 열렸다.",
        [
            ("klue-mrc-v1_dev_00001", "가상전자가 내놓은 휴대전화의 이름은?", "‘별빛 740’", 1, None),
            ("klue-mrc-v1_dev_00002", "출시 행사가 열린 곳은?", "부산의 해운홀", 2, None),
            ("klue-mrc-v1_dev_00003", "이 휴대전화의 가격은 얼마인가?", None, 3, "이틀"),
        ],
    ),
]


def klue_doc(articles) -> dict:
    data = []
    for title, context, qas in articles:
        data.append(
            {
                "title": title,
                "source": "acrofan",
                "news_category": "IT과학",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            _qa(context, "guid", guid, q, a, impossible=a is None, plausible=p, question_type=t)
                            for guid, q, a, t, p in qas
                        ],
                    }
                ],
            }
        )
    return {"version": "1.1", "data": data}


# ------------------------------------------------------------------------------------------------------ SQuAD v2
SQUAD_V2_CONTEXT = (
    "The lighthouse of Varrow Point was built by Edda Lune in 1822. Its lamp was first lit with whale "
    "oil and later with kerosene. The keeper's cottage stands on the northern cliff."
)
SQUAD_V2_QAS = [  # id, question, answers (empty: unanswerable), plausible
    ("v2-1", "Who built the lighthouse of Varrow Point?", ["Edda Lune"], None),
    ("v2-2", "When was the lighthouse built?", ["1822", "in 1822"], None),
    ("v2-3", "Who repaired the lighthouse in 1900?", [], "Edda Lune"),
    ("v2-4", "What was the lamp first lit with?", ["whale oil"], None),
    ("v2-5", "Where does the keeper's cottage stand?", ["the northern cliff", "northern cliff"], None),
    ("v2-6", "What fuel replaced kerosene?", [], "kerosene"),
]


def squad_v2_doc(qas=SQUAD_V2_QAS) -> dict:
    c = SQUAD_V2_CONTEXT
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "Varrow_Point",
                "paragraphs": [
                    {
                        "context": c,
                        "qas": [
                            _qa(c, "id", qid, q, None, answers=answers, impossible=not answers, plausible=plausible)
                            for qid, q, answers, plausible in qas
                        ],
                    }
                ],
            }
        ],
    }


# ------------------------------------------------------------------------------------------------------- KorQuAD
KORQUAD_CONTEXT = "바람섬 등대는 1902년에 세워졌다. 첫 등대지기는 최은별이었고, 그는 등대 일지를 서른 권 남겼다."
KORQUAD_QAS = [
    ("kq-1", "바람섬 등대가 세워진 해는?", "1902년"),
    ("kq-2", "첫 등대지기는 누구인가?", "최은별"),
    ("kq-3", "등대 일지는 몇 권 남았나?", "서른 권"),
]


def korquad_doc() -> dict:
    c = KORQUAD_CONTEXT
    return {
        "version": "KorQuAD_v1.0_dev",
        "data": [
            {
                "title": "바람섬",
                "paragraphs": [{"context": c, "qas": [_qa(c, "id", qid, q, a) for qid, q, a in KORQUAD_QAS]}],
            }
        ],
    }


def write_json(folder: Path, name: str, doc) -> Path:
    path = Path(folder) / name
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- a long context
# ~200 tokens of made-up text, so that a window of 64 tokens has to stride over it
LONG_QUESTION_CONTEXT = (
    " ".join(
        f"The lamp of tower {n} was lit each night by a keeper called {name}."
        for n, name in enumerate(
            [
                "Orla Fenn",
                "Brisk Hadde",
                "Tamsin Roe",
                "Edda Vorl",
                "Kip Marrow",
                "Lune Abbot",
                "Saffa Doyle",
                "Wren Tolley",
                "Maro Quist",
                "Ivo Hartle",
            ]
        )
    )
    + " The last keeper of all, Ferris Galloway, wrote the tower book in 1791."
)
