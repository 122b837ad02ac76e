"""A named option outside its allowed values is refused with a message naming key, values and value."""

import pytest

from fewshot.methods.choices import check_choice


def test_a_known_value_passes_and_an_unknown_one_names_key_choices_and_value():
    check_choice("model.bn_mode", "transductive", ("transductive", "non_transductive"))
    with pytest.raises(ValueError) as caught:
        check_choice("model.bn_mode", "shared", ("transductive", "non_transductive"))
    assert str(caught.value) == "model.bn_mode must be one of ('transductive', 'non_transductive'), got 'shared'."
