"""``--target`` names against ImageNet's real class names: exact names, whole words, indices."""

from __future__ import annotations

import pytest

from featviz.errors import UsageError
from featviz.explainer.targets import resolve_target
from featviz.model.sources.torchvision_models import imagenet_categories

IMAGENET = imagenet_categories()


def resolve(text: str) -> str:
    return IMAGENET[resolve_target(text, IMAGENET, len(IMAGENET))]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("tabby", "tabby"),
        ("tiger cat", "tiger cat"),
        ("Tiger Cat", "tiger cat"),
        ("espresso", "espresso"),  # exact, though 'espresso maker' has the word too
        ("gown", "gown"),  # exact, though 'academic gown' has the word too
        ("cardigan", "cardigan"),  # the sweater; the corgi is 'Cardigan'
        ("Cardigan", "Cardigan"),
    ],
)
def test_an_exact_name_wins(text: str, name: str) -> None:
    assert resolve(text) == name


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("golden", "golden retriever"),
        ("Persian", "Persian cat"),
        ("white shark", "great white shark"),
        ("pong", "ping-pong ball"),  # a hyphen parts words
        ("ping pong", "ping-pong ball"),
        ("fox terrier", "wire-haired fox terrier"),
    ],
)
def test_whole_words_of_exactly_one_class_pick_it(text: str, name: str) -> None:
    assert resolve(text) == name


def test_a_word_of_several_classes_is_ambiguous_and_lists_them() -> None:
    with pytest.raises(UsageError) as info:
        resolve("cat")
    assert info.value.message == (
        "--target 'cat' is ambiguous: 5 classes have those words: 'tiger cat', 'Persian cat', "
        "'Siamese cat', 'Egyptian cat', 'Madagascar cat'"
    )
    assert info.value.hint == "give the whole name, e.g. -t 'tiger cat', or the class index (282)"


def test_a_long_list_of_candidates_is_cut_after_eight() -> None:
    with pytest.raises(UsageError) as info:
        resolve("terrier")
    assert info.value.message == (
        "--target 'terrier' is ambiguous: 18 classes have those words: 'toy terrier', "
        "'American Staffordshire terrier', 'Bedlington terrier', 'Border terrier', "
        "'Kerry blue terrier', 'Irish terrier', 'Norfolk terrier', 'Norwich terrier' "
        "and 10 more"
    )


def test_two_exact_names_differing_in_case_are_ambiguous() -> None:
    with pytest.raises(UsageError, match=r"'CARDIGAN' is ambiguous: 2 classes .*'Cardigan'"):
        resolve("CARDIGAN")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("catam", "closest: 'catamaran', 'patas', 'crate'"),  # a prefix is not a word
        ("tabbby", "closest: 'tabby', 'tray'"),
        ("...", "pass a class index, or see the class names with --labels"),
    ],
)
def test_no_whole_word_match_is_no_such_class(text: str, hint: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve(text)
    assert info.value.message == f"--target '{text}': no such class"
    assert info.value.hint == hint


def test_indices_still_work() -> None:
    assert resolve("281") == "tabby"
    with pytest.raises(UsageError, match="--target 1000: the model has classes 0 to 999"):
        resolve("1000")
