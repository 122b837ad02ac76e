"""A named option outside its allowed values is refused with a message naming key, values and value."""

import pytest

from fewshot.methods.choices import OptionError, check_choice


def test_a_known_value_passes_and_an_unknown_one_names_key_choices_and_value():
    check_choice("model.readout", "attention", ("attention", "class_sum"))
    with pytest.raises(OptionError) as caught:
        check_choice("model.readout", "shared", ("attention", "class_sum"))
    assert str(caught.value) == "model.readout must be one of ('attention', 'class_sum'), got 'shared'."
