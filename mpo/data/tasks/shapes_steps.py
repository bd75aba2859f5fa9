"""Does a `shapes` rationale derive its answer? The shapes step check's reading of a rationale.

Why: the shapes questions are yes/no or 3–4 options as often as not, so a policy that sees poorly is
right by luck on a large share of its samples, with reasoning that contradicts itself ("Squares: 1.
Circles: 1. 1 is more than 1, so yes, option (A)."). Labelled on the final answer alone, those samples
are the chosen side of the pairs and the SFT term teaches them. The check needs no scene: it accepts a
rationale only when it is a derivation in the demonstrations' own form whose every step follows from
the one before and whose conclusion is the answer, and when it lists the scene first, the counts it
states are the counts of that listing. A wrong listing then rarely leads to the right answer, so the
right answers that pass mostly saw the relevant shapes.

The form, per question type (`shapes.py` writes the demonstrations):
- an optional listing, "I see a red circle, a blue square and a red triangle." (required for "How many
  shapes are there?");
- counting: "Red shapes: circle, square." / "Circles: red, blue." then "That is 2.";
- one colour and shape: either filter, then "Red circles: 1.";
- comparing: "Circles: 2." and "Squares: 1." (either order), then "2 is more than 1, so yes, option (B).";
- the most frequent colour: "Red: 2." for every option, then "Red appears most often, option (A).";
- the colour of the only shape of a kind: "The circle is red, option (C).".
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence

from mpo.data.tasks._common import option_letter
from mpo.data.tasks.scenes import COLOURS, OPENERS, PLURALS, SHAPES

_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}
_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_PLURAL = "|".join(PLURALS.values())
_OPTIONS = re.compile(r"\(([A-Z])\) (\w+)")

#: Question templates (`shapes._ask`), each with the slots it names.
_QUESTIONS: list[tuple[str, re.Pattern[str]]] = [
    ("count_all", re.compile(r"How many shapes are there\?$")),
    ("count_colour", re.compile(rf"How many (?P<colour>{_COLOUR}) shapes are there\?$")),
    ("count_shape", re.compile(rf"How many (?P<plural>{_PLURAL}) are there\?$")),
    ("count_colour_shape", re.compile(rf"How many (?P<colour>{_COLOUR}) (?P<plural>{_PLURAL}) are there\?$")),
    ("compare_shape", re.compile(rf"Are there more (?P<first>{_PLURAL}) than (?P<second>{_PLURAL})\? \(A\)")),
    (
        "compare_colour",
        re.compile(rf"Are there more (?P<first>{_COLOUR}) shapes than (?P<second>{_COLOUR}) shapes\? \(A\)"),
    ),
    ("most_colour", re.compile(r"Which colour appears most often\? \(A\)")),
    ("shape_colour", re.compile(rf"What colour is the (?P<shape>{_SHAPE})\? \(A\)")),
]
_LISTING = re.compile(rf"(?:{'|'.join(OPENERS)}) (?P<items>.+)\.$")
_ITEM = re.compile(rf"an? (?P<colour>{_COLOUR}) (?P<shape>{_SHAPE})$")
_THAT_IS = r"That is (\d+)\."
_SENTENCE_END = re.compile(r"(?<=\.)\s+")


class _Unreadable(Exception):
    """A rationale that is not in the derivation's form."""


def question_type(question: str) -> tuple[str, dict[str, str]]:
    """The question's type and slots; ValueError for a question no shapes template wrote."""
    for name, pattern in _QUESTIONS:
        match = pattern.match(question.strip())
        if match:
            return name, match.groupdict()
    raise ValueError(f"not a shapes question: {question[:80]!r}")


def derivation_holds(question: str, rationale: str, answer: str) -> bool:
    """Whether `rationale` derives `answer` (a count, or an option letter) for the shapes `question` in the
    demonstrations' form, consistent with its own listing of the scene when it gives one."""
    qtype, slots = question_type(question)
    listing, body = _listing_and_body(rationale)
    if qtype == "count_all" and listing is None:
        return False
    try:
        return _BODIES[qtype](body, slots, listing, _options(question), answer.strip())
    except _Unreadable:
        return False


def scene_listing(rationale: str) -> list[tuple[str, str]] | None:
    """The scene as the rationale lists it first ([(colour, shape), ...]: what the policy says it sees);
    None when the rationale does not begin with a listing."""
    return _listing_and_body(rationale)[0]


def _listing_and_body(rationale: str) -> tuple[list[tuple[str, str]] | None, list[str]]:
    """The rationale's opening listing (None without one) and the sentences after it."""
    sentences = [s.strip() for s in _SENTENCE_END.split(rationale.strip()) if s.strip()]
    listing = _listing(sentences[0]) if sentences else None
    return listing, sentences[1:] if listing is not None else sentences


def _listing(sentence: str) -> list[tuple[str, str]] | None:
    """'I see a red circle and a blue square.' as [(red, circle), (blue, square)]; None when it is not one."""
    match = _LISTING.match(sentence)
    if not match:
        return None
    *head, last = match["items"].split(", ")
    items = [_ITEM.match(word) for word in [*head, *last.split(" and ")]]
    if not all(items):
        return None
    return [(item["colour"], item["shape"]) for item in items if item]


def _options(question: str) -> list[str]:
    return [text for _, text in _OPTIONS.findall(question)]


def _one(pattern: str, sentence: str) -> re.Match[str]:
    match = re.fullmatch(pattern, sentence)
    if match is None:
        raise _Unreadable(sentence)
    return match


def _named(text: str, vocabulary: Sequence[str]) -> list[str]:
    """'circle, square' or 'none' as a list of vocabulary words."""
    if text == "none":
        return []
    words = text.split(", ")
    if not all(word in vocabulary for word in words):
        raise _Unreadable(text)
    return words


def _count(body: list[str], label: str, vocabulary: Sequence[str], answer: str) -> list[str] | None:
    """'<label>: a, b.' 'That is 2.' with 2 the number of items and the answer; the items, or None."""
    if len(body) != 2:
        return None
    found = _named(_one(rf"{label}: (.+)\.", body[0])[1], vocabulary)
    total = _one(_THAT_IS, body[1])[1]
    return found if int(total) == len(found) and total == answer else None


def _count_all(body: list[str], slots: dict, listing: list | None, options: list[str], answer: str) -> bool:
    assert listing is not None
    return len(body) == 1 and _one(_THAT_IS, body[0])[1] == answer == str(len(listing))


def _count_colour(body: list[str], slots: dict, listing: list | None, options: list[str], answer: str) -> bool:
    colour = slots["colour"]
    found = _count(body, colour.capitalize() + " shapes", SHAPES, answer)
    return found is not None and (listing is None or Counter(found) == Counter(s for c, s in listing if c == colour))


def _count_shape(body: list[str], slots: dict, listing: list | None, options: list[str], answer: str) -> bool:
    plural = slots["plural"]
    found = _count(body, plural.capitalize(), list(COLOURS), answer)
    return found is not None and (
        listing is None or Counter(found) == Counter(c for c, s in listing if s == _SINGULAR[plural])
    )


def _count_colour_shape(body: list[str], slots: dict, listing: list | None, options: list[str], answer: str) -> bool:
    colour, plural = slots["colour"], slots["plural"]
    shape = _SINGULAR[plural]
    if len(body) != 2:
        return False
    by_colour = re.fullmatch(rf"{colour.capitalize()} shapes: (.+)\.", body[0])
    if by_colour:
        found = _named(by_colour[1], SHAPES)
        matching = found.count(shape)
        consistent = listing is None or Counter(found) == Counter(s for c, s in listing if c == colour)
    else:
        found = _named(_one(rf"{plural.capitalize()}: (.+)\.", body[0])[1], list(COLOURS))
        matching = found.count(colour)
        consistent = listing is None or Counter(found) == Counter(c for c, s in listing if s == shape)
    total = _one(rf"{colour.capitalize()} {plural}: (\d+)\.", body[1])[1]
    return consistent and total == answer == str(matching)


def _compare(body: list[str], slots: dict, listing: list | None, options: list[str], answer: str, key: str) -> bool:
    first, second = slots["first"], slots["second"]
    if len(body) != 3 or sorted(options) != ["no", "yes"]:
        return False

    def label(name: str) -> str:
        return name.capitalize() if key == "shape" else f"{name.capitalize()} shapes"

    counts: dict[str, int] = {}
    for sentence in body[:2]:
        match = _one(rf"({label(first)}|{label(second)}): (\d+)\.", sentence)
        counts[match[1]] = int(match[2])
    if len(counts) != 2:  # the same count stated twice
        return False
    a, b = counts[label(first)], counts[label(second)]
    more, verdict = a > b, _one(r"(\d+) is (not )?more than (\d+), so (yes|no), option \(([A-Z])\)\.", body[2])
    if (int(verdict[1]), int(verdict[3])) != (a, b) or (verdict[2] is None) != more:
        return False
    if verdict[4] != ("yes" if more else "no") or verdict[5] != option_letter(options.index(verdict[4])):
        return False
    if listing is not None:
        index = 1 if key == "shape" else 0
        seen = Counter(item[index] for item in listing)
        names = (_SINGULAR[first], _SINGULAR[second]) if key == "shape" else (first, second)
        if (seen[names[0]], seen[names[1]]) != (a, b):
            return False
    return verdict[5] == answer


def _most_colour(body: list[str], slots: dict, listing: list | None, options: list[str], answer: str) -> bool:
    if len(body) != len(options) + 1:
        return False
    counts: dict[str, int] = {}
    for sentence in body[:-1]:
        match = _one(rf"({_COLOUR}): (\d+)\.", sentence.lower())
        counts[match[1]] = int(match[2])
    if sorted(counts) != sorted(options):  # every option counted, once
        return False
    ranked = sorted(counts.values(), reverse=True)
    best = max(counts, key=counts.__getitem__)
    if ranked[0] == ranked[1]:
        return False
    verdict = _one(rf"({_COLOUR.title()}) appears most often, option \(([A-Z])\)\.", body[-1])
    if verdict[1].lower() != best or verdict[2] != option_letter(options.index(best)):
        return False
    if listing is not None and any(Counter(c for c, _ in listing)[c] != n for c, n in counts.items()):
        return False
    return verdict[2] == answer


def _shape_colour(body: list[str], slots: dict, listing: list | None, options: list[str], answer: str) -> bool:
    shape = slots["shape"]
    if len(body) != 1:
        return False
    verdict = _one(rf"The {shape} is ({_COLOUR}), option \(([A-Z])\)\.", body[0])
    colour = verdict[1]
    if colour not in options or verdict[2] != option_letter(options.index(colour)):
        return False
    if listing is not None and [c for c, s in listing if s == shape] != [colour]:
        return False
    return verdict[2] == answer


_BODIES = {
    "count_all": _count_all,
    "count_colour": _count_colour,
    "count_shape": _count_shape,
    "count_colour_shape": _count_colour_shape,
    "compare_shape": functools.partial(_compare, key="shape"),
    "compare_colour": functools.partial(_compare, key="colour"),
    "most_colour": _most_colour,
    "shape_colour": _shape_colour,
}
