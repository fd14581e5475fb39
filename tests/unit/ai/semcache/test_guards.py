"""Guard checks: a pair above the threshold is still refused when numbers, names,
negations, question words, opposite words or operator symbols disagree; paraphrases
pass."""

from __future__ import annotations

import pytest

from ai.semcache import Guard, GuardConfig, check
from ai.semcache.guards import Features, enabled_guards

pytestmark = pytest.mark.unit

ALL = tuple(Guard)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I lose 10 kg in 2 months?", "How do I lose 10 kg in 3 months?"),
        ("What happened in 2019?", "What happened in 2020?"),
        ("Is 3.5 GPA good?", "Is 3.6 GPA good?"),
        ("How do I earn 100 dollars a day?", "How do I earn dollars a day?"),
        ("What are the five best books?", "What are the ten best books?"),
    ],
)
def test_numbers_must_agree(a: str, b: str) -> None:
    assert check(a, b, ALL) is Guard.NUMBERS


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Can I earn 1,000 dollars a month?", "Can I earn 1000 dollars a month?"),
        ("What are the 5 best books?", "What are the five best books?"),
        ("Is 2.50 enough?", "Is 2.5 enough?"),
    ],
)
def test_the_same_number_written_differently_agrees(a: str, b: str) -> None:
    assert check(a, b, ALL) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Why can't I sleep at night?", "Why can I sleep at night?"),
        ("Is it safe to drink coffee?", "Is it not safe to drink coffee?"),
        ("Do cats ever eat grass?", "Do cats never eat grass?"),
        ("Is there a way to stop it?", "Is there no way to stop it?"),
    ],
)
def test_negations_must_agree(a: str, b: str) -> None:
    assert check(a, b, ALL) is Guard.NEGATION


def test_negations_written_differently_agree() -> None:
    assert check("Why can't I sleep at night?", "Why am I not able to sleep at night?", ALL) is None
    # "or not" / "why not" frame a yes-no question; they do not negate it.
    assert check("Are tachyons real?", "Are tachyons real or not?", ALL) is None
    assert check("Is coffee healthy? Why or why not?", "Is coffee healthy?", ALL) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is the capital of France?", "What is the capital of Germany?"),
        ("How do I get a visa for the USA?", "How do I get a visa for the UK?"),
        ("Should I buy an iPhone or not?", "Should I buy a phone or not?"),
        ("Is Python hard to learn?", "Is Java hard to learn?"),
    ],
)
def test_names_must_agree(a: str, b: str) -> None:
    assert check(a, b, ALL) is Guard.ENTITIES


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("how do i learn python?", "How do I learn Python?"),  # capitals are not reliable
        ("Python is easy to learn.", "Is Python easy to learn?"),  # sentence start
        ("What Is The Best Way To Learn?", "What is the best way to learn?"),  # Title Case
        ("What are Google's products?", "What products does Google make?"),  # possessive
    ],
)
def test_names_written_differently_agree(a: str, b: str) -> None:
    assert check(a, b, ALL) is None


def test_question_words_must_be_compatible() -> None:
    assert check("Why do people learn Python?", "How do people learn Python?", ALL) is (
        Guard.QUESTION_WORDS
    )
    assert check("Where do I park?", "When do I park?", ALL) is Guard.QUESTION_WORDS
    assert check("What is the best way to learn to cook?", "How do I learn to cook?", ALL) is None


def test_opposite_words_are_refused() -> None:
    assert check("How can I lose weight fast?", "How can I gain weight fast?", ALL) is (
        Guard.ANTONYMS
    )
    assert check("What is the best laptop?", "What is the worst laptop?", ALL) is Guard.ANTONYMS
    # Both words in both texts: the same question.
    assert check("Pros and cons: buy or sell?", "Buy or sell, pros and cons?", ALL) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What was ported from .NET to Java?", "What was ported from Java to .NET?"),
        (
            "How do I convert current source to voltage source?",
            "How do I convert voltage source to current source?",
        ),
        ("Are cats smarter than dogs?", "Are dogs smarter than cats?"),
    ],
)
def test_swapped_roles_are_refused(a: str, b: str) -> None:
    assert check(a, b, ALL) is Guard.WORD_ORDER


CSV_TASK = (
    "Write a function that reads a CSV file with a header row, skips empty lines, converts "
    "the price column to a decimal and returns the total per customer, in {}."
)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # MiniLM puts this pair at cosine 0.948 (measured): above the shipped threshold.
        (CSV_TASK.format("F#"), CSV_TASK.format("F")),
        (CSV_TASK.format("C"), CSV_TASK.format("C++")),
        ("What does the formula =A1+B1 return?", "What does the formula =A1*B1 return?"),
        ("When is a == b true in Python?", "When is a != b true in Python?"),
        ("Is a used car under $7000 a good deal?", "Is a used car under \u20ac7000 a good deal?"),
    ],
)
def test_operator_and_currency_symbols_must_agree(a: str, b: str) -> None:
    assert check(a, b, ALL) is Guard.SYMBOLS


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "What is the hierarchy at McKinsey and Company?",
            "What is the hierarchy at McKinsey & Company?",
        ),
        ("How do gay or lesbian people have sex?", "How do gay/lesbian people have sex?"),
        ("Help, my code does not compile!", "Help, my code does not compile"),
        ("What is the best compiler for C++?", "Which is the best compiler for C++ ?"),
    ],
)
def test_prose_symbols_are_ignored(a: str, b: str) -> None:
    assert check(a, b, ALL) is None


def test_reordered_words_without_a_role_word_pass() -> None:
    assert (
        check("Which laptop and phone should I buy?", "Which phone and laptop should I buy?", ALL)
        is None
    )


def test_identical_texts_pass_every_guard() -> None:
    text = "Why didn't Apple sell 10 million iPhones in 2019?"
    assert check(text, text, ALL) is None


def test_a_switched_off_guard_is_not_applied() -> None:
    guards = enabled_guards(GuardConfig(numbers=False))
    assert Guard.NUMBERS not in guards
    assert check("Is 3 enough?", "Is 4 enough?", guards) is None


def test_features_are_computed_once_and_reused() -> None:
    stored = Features("What is the capital of France?")
    assert check(stored, "What is the capital of France today?", ALL) is None
    assert stored.entities == frozenset({"france"})
