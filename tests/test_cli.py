"""The CLI's shared option flags: one definition, the same options wherever they appear."""

import pytest

from anygen.cli import build_parser, edit_options_of
from anygen.errors import AnygenError


def test_edit_and_eval_edit_flags_build_the_same_options():
    parser = build_parser()
    edit = parser.parse_args(["edit", "a.png", "make it blue", "--best-of", "4", "--reason", "--greedy-plan",
                              "--plan-in-words", "--retries", "2"])
    evaluate = parser.parse_args(["eval", "shapes", "--edit-best-of", "4", "--edit-reason", "--edit-greedy-plan",
                                  "--edit-plan-in-words", "--edit-retries", "2"])
    assert edit_options_of(edit) == edit_options_of(evaluate, "edit-")
    assert edit_options_of(edit).best_of == 4 and edit_options_of(edit).retries == 2


def test_edit_flags_are_validated_once():
    args = build_parser().parse_args(["eval", "shapes", "--edit-best-of", "0"])
    with pytest.raises(AnygenError, match="best_of"):
        edit_options_of(args, "edit-")
