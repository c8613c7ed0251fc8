"""The built-in Japanese preference dataset (AI, programming, data science).

Each pair is composed from hand-written topic facts (``dpo_recipe/topics/*.json``): a question
form picks which facts make the ``chosen`` answer, and a rejection type decides how the
``rejected`` answer goes wrong. Two types are hard negatives (same polite register, similar
length, wrong content), because templated polite-long vs curt-short pairs are separated after a
few steps and make reward accuracy meaningless. Whole topics are held out for the test split.
Everything is driven by one ``random.Random(seed)``: same seed, same bytes.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DOMAINS = ("ai", "programming", "data_science")
REJECTION_TYPES = (
    "factual_error",  # hard: a false claim in chosen's register and length
    "concept_swap",  # hard: a neighbouring concept's facts under this topic's name
    "off_topic",  # polite, similar length, about another domain's topic
    "too_terse",
    "impolite",
    "english",
    "refusal",
    "repetitive",
)
HARD_NEGATIVE_TYPES = ("factual_error", "concept_swap")
HARD_LENGTH_TOLERANCE = 0.25
TEST_TOPIC_SHARE = 0.10

_TOPICS_DIR = Path(__file__).resolve().parent / "topics"


@dataclass(frozen=True)
class Topic:
    topic: str
    en: str
    neighbor: str
    definition: str
    detail: str
    usage: str
    example: str
    wrong_definition: str
    wrong_detail: str
    definition_en: str
    domain: str

    def facts(self, wrong: bool = False) -> dict[str, str]:
        return {
            "definition": self.wrong_definition if wrong else self.definition,
            "detail": self.wrong_detail if wrong else self.detail,
            "usage": self.usage,
            "example": self.example,
        }

    def renamed_definition(self, name: str) -> str:
        """This topic's definition told as if it defined ``name`` (for concept swaps)."""
        return name + self.definition[len(self.topic) :]


def load_topics() -> list[Topic]:
    topics = []
    for domain in DOMAINS:
        entries = json.loads((_TOPICS_DIR / f"{domain}.json").read_text(encoding="utf-8"))
        topics.extend(Topic(domain=domain, **entry) for entry in entries)
    return topics


# A question form: the prompt, and which facts (in order) answer it. The "difference" form
# also names a second topic and is answered by both definitions.
QUESTION_FORMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "what": (("{t}とは何ですか？", "{t}とは何か教えてください。"), ("definition", "detail")),
    "beginner": (
        ("初心者向けに{t}を説明してください。", "{t}について、初心者にも分かるように教えてください。"),
        ("definition", "example"),
    ),
    "usage": (
        ("{t}の使いどころを教えてください。", "{t}は実際にどのような場面で役に立ちますか？"),
        ("definition", "usage"),
    ),
    "example": (("{t}について、例を挙げて説明してください。", "{t}の具体例を教えてください。"), ("example", "detail")),
    "points": (
        ("{t}について押さえておくべきポイントは何ですか？", "{t}を学ぶときの要点を教えてください。"),
        ("detail", "usage"),
    ),
    "difference": (("{t}と{n}の違いは何ですか？", "{t}と{n}はどう違いますか？"), ()),
}


def _difference_answer(first: str, second: str) -> str:
    return f"{first}一方、{second}"


def chosen_answer(topic: Topic, form: str, partner: Topic) -> str:
    if form == "difference":
        return _difference_answer(topic.definition, partner.definition)
    facts = topic.facts()
    return "".join(facts[slot] for slot in QUESTION_FORMS[form][1])


# ---------------------------------------------------------------------------- rejections


def _factual_error(topic: Topic, form: str, partner: Topic) -> str:
    if form == "difference":
        return _difference_answer(topic.wrong_definition, partner.definition)
    slots = QUESTION_FORMS[form][1]
    wrong, right = topic.facts(wrong=True), topic.facts()
    # Falsify the first falsifiable fact; keep the rest true so only content differs.
    falsified = next(s for s in slots if s in ("definition", "detail"))
    return "".join(wrong[s] if s == falsified else right[s] for s in slots)


def _concept_swap(topic: Topic, form: str, neighbour: Topic) -> str:
    if form == "difference":
        return _difference_answer(neighbour.renamed_definition(topic.topic), topic.renamed_definition(neighbour.topic))
    facts = neighbour.facts()
    facts["definition"] = neighbour.renamed_definition(topic.topic)
    return "".join(facts[slot] for slot in QUESTION_FORMS[form][1])


_TERSE = (
    "{t}です。",
    "{en}のことです。",
    "よくある概念です。",
    "場合によります。",
    "{t}は重要です。",
    "色々あります。",
)
_RUDE_OPENERS = (
    "そんなことも知らないの？",
    "はあ、またその質問か。",
    "自分で調べなよ。まあ一応言っとく。",
    "常識だろ。",
)
_RUDE_CLOSERS = ("分かった？", "これくらい覚えとけよ。", "もう聞くなよ。", "")
_REFUSALS = (
    "申し訳ありませんが、{t}に関するご質問にはお答えできません。専門家にご相談ください。",
    "恐れ入りますが、その内容については回答を控えさせていただきます。",
    "申し訳ございません。{t}については私からはお答えできかねます。ほかのご質問をどうぞ。",
)
_RAMBLES = (
    "えーと、{t}ですね。{t}というのは、まあ{t}のことです。{d}つまり、{t}は{t}なんです。繰り返しになりますが、{d}",
    "{d}{d}大事なことなのでもう一度言います。{d}",
    "{t}は大事です。{t}は本当に大事です。{d}とにかく{t}は大事で、{t}が大事だということを覚えておいてください。",
)
_ENGLISH_TAILS = ("", " It is a common topic for beginners.", " You can find more in any textbook.")


def to_plain_form(text: str) -> str:
    """Turn です・ます sentence endings into plain (casual) form, for impolite answers."""
    sentences = [s for s in re.split(r"(?<=。)", text) if s]
    return "".join(_plain_sentence(s) for s in sentences)


_ICHIDAN_I = ("でき", "起き", "生き", "用い", "見", "い")
_GODAN_I_TO_U = {
    "い": "う",
    "き": "く",
    "ぎ": "ぐ",
    "し": "す",
    "ち": "つ",
    "に": "ぬ",
    "び": "ぶ",
    "み": "む",
    "り": "る",
}
_GODAN_I_TO_A = {
    "い": "わ",
    "き": "か",
    "ぎ": "が",
    "し": "さ",
    "ち": "た",
    "に": "な",
    "び": "ば",
    "み": "ま",
    "り": "ら",
}
_E_ROW = set("えけげせぜてでねへべぺめれ")


def _is_kanji(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _plain_sentence(sentence: str) -> str:
    fixed = {
        "ではありません。": "ではない。",
        "ありません。": "ない。",
        "でしょう。": "だろう。",
        "でした。": "だった。",
        "です。": "だ。",
    }
    for polite, plain in fixed.items():
        if sentence.endswith(polite):
            return sentence[: -len(polite)] + plain
    for ending, negative in (("ます。", False), ("ません。", True)):
        if sentence.endswith(ending):
            stem = sentence[: -len(ending)]
            return _plain_verb(stem, negative) + "。"
    return sentence


def _plain_verb(stem: str, negative: bool) -> str:
    last = stem[-1:]
    before = stem[-2:-1]
    suru = last == "し" and (
        stem.endswith("にし")
        or (_is_kanji(before) and _is_kanji(stem[-3:-2]))
        or not (_is_kanji(before) or before in "らかやさわたまなばが")
    )
    if suru:
        return stem[:-1] + ("しない" if negative else "する")
    ichidan = (
        last in _E_ROW
        or _is_kanji(last)
        or any(stem.endswith(s) and (s != "い" or not _is_kanji(before)) for s in _ICHIDAN_I)
    )
    if ichidan:
        return stem + ("ない" if negative else "る")
    table = _GODAN_I_TO_A if negative else _GODAN_I_TO_U
    if last in table:
        return stem[:-1] + table[last] + ("ない" if negative else "")
    return stem + ("ない" if negative else "る")


# ---------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Slot:
    topic: Topic
    form: str
    rejection_type: str


def generate_pairs(num_pairs: int = 1000, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Return ``{"train": rows, "test": rows}``; rows have the dataset's six columns."""
    if num_pairs < 10:
        raise ValueError("num_pairs must be at least 10 (the test split holds out whole topics)")
    rng = random.Random(seed)
    topics = load_topics()
    test_topics = _held_out_topics(topics, rng)
    combos = [(t, form) for t in topics for form in QUESTION_FORMS]
    rng.shuffle(combos)
    types = [REJECTION_TYPES[i % len(REJECTION_TYPES)] for i in range(num_pairs)]
    rng.shuffle(types)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for i, rejection_type in enumerate(types):
        topic, form = combos[i % len(combos)]
        split = "test" if topic.topic in test_topics else "train"
        same_split = [t for t in topics if (t.topic in test_topics) == (split == "test")]
        splits[split].append(_make_pair(_Slot(topic, form, rejection_type), same_split, topics, rng))
    return splits


def _held_out_topics(topics: list[Topic], rng: random.Random) -> set[str]:
    held_out: set[str] = set()
    for domain in DOMAINS:
        names = sorted(t.topic for t in topics if t.domain == domain)
        held_out.update(rng.sample(names, max(1, round(len(names) * TEST_TOPIC_SHARE))))
    return held_out


def _closest_by_length(target: int, candidates: list[Topic], render: Callable[[Topic], str]) -> Topic:
    return min(candidates, key=lambda c: (abs(len(render(c)) - target), c.topic))


def _make_pair(slot: _Slot, same_split: list[Topic], all_topics: list[Topic], rng: random.Random) -> dict[str, str]:
    topic, form = slot.topic, slot.form
    by_name = {t.topic: t for t in same_split}
    same_domain = [t for t in same_split if t.domain == topic.domain and t.topic != topic.topic]
    partner = by_name.get(topic.neighbor) or rng.choice(same_domain)
    prompt = rng.choice(QUESTION_FORMS[form][0]).format(t=topic.topic, n=partner.topic)
    chosen = chosen_answer(topic, form, partner)
    kind = slot.rejection_type
    if kind == "factual_error":
        rejected = _factual_error(topic, form, partner)
    elif kind == "concept_swap":
        # The declared neighbour when it keeps the length within tolerance, else the closest one.
        def render(n: Topic) -> str:
            return _concept_swap(topic, form, n)

        if form == "difference" or _length_ok(chosen, render(partner)):
            neighbour = partner
        else:
            neighbour = _closest_by_length(len(chosen), same_domain, render)
        rejected = render(neighbour)
    elif kind == "off_topic":
        others = [t for t in same_split if t.domain != topic.domain]
        other = _closest_by_length(len(chosen), rng.sample(others, 12), lambda o: chosen_answer(o, "what", o))
        rejected = chosen_answer(other, "what", other)
    elif kind == "too_terse":
        rejected = rng.choice(_TERSE).format(t=topic.topic, en=topic.en)
    elif kind == "impolite":
        rejected = rng.choice(_RUDE_OPENERS) + to_plain_form(chosen) + rng.choice(_RUDE_CLOSERS)
    elif kind == "english":
        rejected = topic.definition_en + rng.choice(_ENGLISH_TAILS)
    elif kind == "refusal":
        rejected = rng.choice(_REFUSALS).format(t=topic.topic)
    else:  # repetitive
        rejected = rng.choice(_RAMBLES).format(t=topic.topic, d=topic.definition)
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "domain": topic.domain,
        "topic": topic.topic,
        "rejection_type": kind,
    }


def _length_ok(chosen: str, rejected: str) -> bool:
    return abs(len(rejected) / len(chosen) - 1) <= HARD_LENGTH_TOLERANCE
