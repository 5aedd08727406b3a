"""``errors``: the user-facing error type and the seed check every command shares."""

from __future__ import annotations

import numpy as np
import pytest

from dynsparse import errors


def test_seeds_are_32_bit_non_negative_integers():
    assert errors.check_seed(0) == 0 and errors.check_seed(np.uint32(7)) == 7 and errors.check_seed(errors.MAX_SEED) == 2**32 - 1
    for bad in (-1, 2**32, 1.0, True, "3", None):
        with pytest.raises(errors.UserError) as info:
            errors.check_seed(bad, "sweep seed")
        assert str(info.value) == f"sweep seed {bad!r} is not allowed; allowed: an integer in 0 .. 2**32 - 1"
    assert issubclass(errors.UserError, ValueError)  # callers that catch ValueError still see it
