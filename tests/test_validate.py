"""tat_ext._validate: numpy scalars accepted, bools and strings rejected, errors name the argument."""
import fractions
import math

import numpy as np
import pytest
import torch

from tat_ext import _validate
from tat_ext._validate import ArgumentValueError


def test_real():
    for value in (2, 2.0, np.float32(2.0), np.float16(2.0), np.int64(2), np.uint8(2), fractions.Fraction(4, 2)):
        result = _validate.real("gain", value)
        assert result == 2.0 and type(result) is float
    assert math.isinf(_validate.real("x", float("inf"), finite=False))
    assert _validate.real("eta", 0.5, gt=0, lt=1) == 0.5
    for value in (True, np.bool_(False), "1", None, 1j, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="gain must be a real number"):
            _validate.real("gain", value)
    for value, match in [(float("nan"), "finite"), (float("-inf"), "finite"), (10**400, "too large for a float")]:
        with pytest.raises(ArgumentValueError, match=match) as info:
            _validate.real("gain", value)
        assert info.value.argument == "gain" and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=r"eta must be > 0 and < 1, got 1.5"):
        _validate.real("eta", 1.5, gt=0, lt=1)
    with pytest.raises(ValueError, match=r"tau must be > 0"):
        _validate.real("tau", float("nan"), finite=False, gt=0)  # NaN meets no bound
    with pytest.raises(ValueError, match=r"tau must be <= 1, got 1(0){56}\.\.\.$"):  # shortened
        _validate.real("tau", 10**100, le=1)


def test_integer_boolean_one_of_real_array():
    assert _validate.integer("depth", np.int32(7), ge=1, le=10) == 7
    for value in (7.0, np.float64(7), True, "7"):
        with pytest.raises(TypeError, match="depth must be an int"):
            _validate.integer("depth", value)
    with pytest.raises(ArgumentValueError, match="depth must be >= 1 and <= 10, got 11"):
        _validate.integer("depth", 11, ge=1, le=10)
    assert _validate.boolean("delta", np.bool_(True)) is True
    for value in (1, "yes", None):
        with pytest.raises(TypeError, match="delta must be a bool"):
            _validate.boolean("delta", value)
    assert _validate.one_of("mode", "off", ("one", "off")) == "off"
    with pytest.raises(ArgumentValueError, match="mode must be one of 'one', 'off', got 'of'"):
        _validate.one_of("mode", "of", ("one", "off"))
    np.testing.assert_array_equal(_validate.real_array("c", [0, 0.5]), np.array([0.0, 0.5]))
    assert _validate.real_array("c", torch.tensor([0.25])).dtype == np.float64
    for value in (None, [0.1, None], ["0.1"], [True], "0.1"):
        with pytest.raises(TypeError, match="c must be a real number"):
            _validate.real_array("c", value)
