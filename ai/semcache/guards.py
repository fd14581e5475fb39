"""Guard checks: cheap lexical tests that a near-duplicate must also pass.

Sentence embeddings put "How do I lose weight?" and "How do I gain weight?", or the
same question about 2019 and about 2020, very close together; serving one's answer
for the other is the costly mistake of a semantic cache. Each guard extracts one
feature from both texts (numbers, names, negations, question words, opposite words,
the roles of words around "to" / "from" / "than", operator and currency symbols) and
refuses the match when they disagree. The rules are general English heuristics,
not a list of known pairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from ai.semcache.config import GuardConfig


class Guard(StrEnum):
    """Names of the checks, as reported by ``check`` and the evaluation."""

    NUMBERS = "numbers"
    ENTITIES = "entities"
    NEGATION = "negation"
    QUESTION_WORDS = "question_words"
    ANTONYMS = "antonyms"
    WORD_ORDER = "word_order"
    SYMBOLS = "symbols"


def _split(words: str) -> list[str]:
    return words.split()


_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!:;\"“”()\[\]\n]")
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nobody|nothing|nowhere|neither|nor|cannot|without)\b|n['\u2019]t\b"
)
_FRAMING_NOT = re.compile(r"\b(?:or not|why not)\b")
#: Runs of operator and currency characters: C++ / C#, == / !=, A1+B1 / A1*B1, $ / EUR.
_SYMBOL_RUN = re.compile(r"[+#=<>~%^|$\u20ac\u00a3\u00a5@!*&/]+")
#: Runs made only of these are prose ("Help!", "A & B", "and/or", a footnote "*").
_PROSE_SYMBOLS = frozenset("!&/*")

_UNITS = _split(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen \
fourteen fifteen sixteen seventeen eighteen nineteen"
)
_TENS = _split("twenty thirty forty fifty sixty seventy eighty ninety")
_ORDINALS = _split("zeroth first second third fourth fifth sixth seventh eighth ninth tenth")
NUMBER_WORDS: dict[str, str] = {
    **{w: str(i) for i, w in enumerate(_UNITS) if w != "one"},  # "one" is mostly a pronoun
    **{w: str(20 + 10 * i) for i, w in enumerate(_TENS)},
    **{w: str(i) for i, w in enumerate(_ORDINALS) if w not in ("first", "second")},
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "trillion": "1000000000000",
    "dozen": "12",
}

#: Capitalised words that are not names even in the middle of a sentence.
_NOT_NAMES = frozenset(
    _split(
        """i i'm i've i'd i'll a an the and or but if of in on at to for from by with as is are
    was were be been do does did what why how when where who whom whose which can could
    would should will shall may might must my your his her its our their this that these
    those it he she we they you me him us them vs mr mrs ms dr"""
    )
)

#: Words that give the words around them roles (from X to Y, X than Y, X over Y).
_DIRECTIONAL = frozenset(
    _split("to from than vs versus into against over instead rather before after")
)
#: Words too common to carry a role in a swap.
_FUNCTION_WORDS = _NOT_NAMES | frozenset(_split("get some any best good more most way"))

_WH = ("what", "why", "how", "when", "where", "who", "whom", "whose", "which")
#: Question words that ask for the same kind of answer.
_WH_CLASS = {"whom": "who", "whose": "who", "which": "what"}

_OPPOSITES = """best worst|better worse|good bad|more less|most least|before after|
increase decrease|advantages disadvantages|positive negative|male female|men women|
man woman|boy girl|boys girls|husband wife|boyfriend girlfriend|father mother|son daughter|
brother sister|buy sell|buying selling|win lose|gain lose|start stop|rich poor|
cheap expensive|easy hard|easy difficult|fast slow|big small|large small|high low|
true false|love hate|legal illegal|possible impossible|young old|new old|first last|
import export|input output|hot cold|pass fail|online offline|upload download|open close|
accept reject|agree disagree|happy sad|north south|east west|left right|light dark|
day night|summer winter|maximum minimum|max min|top bottom|strong weak|long short|
internal external|private public|upper lower|add remove|up down|inside outside|
introvert extrovert|like dislike|include exclude|always never|success failure|
succeed fail|heavy light|safe dangerous|healthy unhealthy|rise fall|above below|
over under|past future|asleep awake|sleep wake|right wrong|arrive leave|push pull|
employer employee|teacher student|parent child|parents children|
loss gain|lost found|forget remember|dead alive|death life|send receive|give take|
friend enemy|mac windows|android ios|buyers sellers|seller buyer|developed developing"""


def _stem(word: str) -> str:
    """Lower case without a possessive or a plural s (Google's -> google, GPUs -> gpu)."""
    word = word.lower().replace("\u2019", "'")
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word


#: Pairs of opposite words, in the stemmed form that ``Features.lower`` holds.
OPPOSITES: frozenset[tuple[str, str]] = frozenset(
    (_stem(a), _stem(b))
    for a, b in (pair.split() for pair in _OPPOSITES.replace("\n", "").split("|"))
)


def _number(token: str) -> str:
    """Canonical form of a digit run: grouping commas dropped, 2.50 -> 2.5."""
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", token):
        token = token.replace(",", "")
    token = token.replace(",", ".")
    if "." in token and token.count(".") == 1:
        token = token.rstrip("0").rstrip(".")
    return token.lstrip("0") or "0"


@dataclass(frozen=True)
class Features:
    """The lexical features of one text, computed once per text."""

    text: str

    @cached_property
    def words(self) -> tuple[str, ...]:
        return tuple(_WORD.findall(self.text))

    @cached_property
    def lower(self) -> frozenset[str]:
        return frozenset(_stem(w) for w in self.words)

    @cached_property
    def numbers(self) -> Counter[str]:
        found = Counter(_number(t) for t in _DIGITS.findall(self.text))
        found.update(NUMBER_WORDS[w] for w in (w.lower() for w in self.words) if w in NUMBER_WORDS)
        return found

    @cached_property
    def negations(self) -> int:
        # "... or not?" and "why or why not?" frame a question; they do not negate it.
        return len(_NEGATION.findall(_FRAMING_NOT.sub(" ", self.text.lower())))

    @cached_property
    def entities(self) -> frozenset[str]:
        return frozenset(_stem(w) for w in _entity_words(self.text))

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        return tuple(w.lower() for w in self.words)

    @cached_property
    def first_position(self) -> dict[str, int]:
        positions: dict[str, int] = {}
        for i, token in enumerate(self.tokens):
            positions.setdefault(token, i)
        return positions

    @cached_property
    def symbols(self) -> Counter[str]:
        return Counter(r for r in _SYMBOL_RUN.findall(self.text) if not set(r) <= _PROSE_SYMBOLS)

    @cached_property
    def question_word(self) -> str | None:
        for word in self.words:
            lowered = word.lower()
            if lowered in _WH:
                return _WH_CLASS.get(lowered, lowered)
        return None


def _entity_words(text: str) -> list[str]:
    """Acronyms, CamelCase and capitalised words that do not start a sentence.

    In a text written in Title Case, capitals say nothing; only acronyms and CamelCase
    count there.
    """
    found: list[str] = []
    capitalised = 0
    alphabetic = 0
    for sentence in _SENTENCE_END.split(text):
        words = _WORD.findall(sentence)
        for position, word in enumerate(words):
            letters = [c for c in word if c.isalpha()]
            if not letters:
                continue
            alphabetic += 1
            upper = sum(c.isupper() for c in letters)
            if len(letters) >= 2 and upper == len(letters):
                found.append(word)  # acronym: USA, GPU, CLRS
            elif upper >= 2 or (upper == 1 and not word[0].isupper()):
                found.append(word)  # CamelCase: iPhone, JavaScript, McDonald
            elif word[0].isupper():
                capitalised += 1
                if position > 0 and word.lower() not in _NOT_NAMES:
                    found.append(word)
    if alphabetic >= 4 and capitalised >= 0.6 * alphabetic:
        return [w for w in found if sum(c.isupper() for c in w) >= 2 or not w[0].isupper()]
    return found


def _numbers_agree(a: Features, b: Features) -> bool:
    return a.numbers == b.numbers


def _entities_agree(a: Features, b: Features) -> bool:
    # A name must occur in the other text too, capitalised or not: users are not
    # consistent with capitals, but they do not drop or swap the names they ask about.
    return a.entities <= b.lower and b.entities <= a.lower


def _negation_agrees(a: Features, b: Features) -> bool:
    return a.negations == b.negations


def _question_words_agree(a: Features, b: Features) -> bool:
    qa, qb = a.question_word, b.question_word
    if qa is None or qb is None or qa == qb:
        return True
    # "what" and "how" ask the same thing in many phrasings ("what is the best way" /
    # "how do I"); the others ask for a reason, a time, a place or a person.
    return {qa, qb} == {"what", "how"}


def _antonyms_agree(a: Features, b: Features) -> bool:
    for x, y in OPPOSITES:
        if (x in a.lower and y in b.lower and x not in b.lower and y not in a.lower) or (
            y in a.lower and x in b.lower and y not in b.lower and x not in a.lower
        ):
            return False
    return True


def _word_order_agrees(a: Features, b: Features) -> bool:
    """Refuse swapped roles: "from Java to .NET" vs "from .NET to Java"."""
    pa, pb = a.first_position, b.first_position
    shared = [w for w in pa if w in pb and w not in _FUNCTION_WORDS and w not in _DIRECTIONAL]
    for i, x in enumerate(shared):
        for y in shared[i + 1 :]:
            if (pa[x] < pa[y]) != (pb[x] < pb[y]) and (
                _directional_between(a.tokens, pa[x], pa[y])
                and _directional_between(b.tokens, pb[x], pb[y])
            ):
                return False
    return True


def _symbols_agree(a: Features, b: Features) -> bool:
    """Refuse a different language, operator or currency: "in F#" vs "in F"."""
    return a.symbols == b.symbols


def _directional_between(tokens: tuple[str, ...], i: int, j: int) -> bool:
    low, high = min(i, j), max(i, j)
    return any(t in _DIRECTIONAL for t in tokens[low + 1 : high])


CHECKS: dict[Guard, Callable[[Features, Features], bool]] = {
    Guard.NUMBERS: _numbers_agree,
    Guard.ENTITIES: _entities_agree,
    Guard.NEGATION: _negation_agrees,
    Guard.QUESTION_WORDS: _question_words_agree,
    Guard.ANTONYMS: _antonyms_agree,
    Guard.WORD_ORDER: _word_order_agrees,
    Guard.SYMBOLS: _symbols_agree,
}


def enabled_guards(config: GuardConfig) -> tuple[Guard, ...]:
    """The guards switched on in ``config``, in a fixed order."""
    return tuple(g for g in Guard if getattr(config, g.value))


def check(a: str | Features, b: str | Features, guards: tuple[Guard, ...]) -> Guard | None:
    """The first guard that ``a`` and ``b`` fail, or None when they pass them all."""
    fa = a if isinstance(a, Features) else Features(a)
    fb = b if isinstance(b, Features) else Features(b)
    for guard in guards:
        if not CHECKS[guard](fa, fb):
            return guard
    return None
