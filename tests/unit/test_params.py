"""Trigger params checked at run time: REST confs skip the form's validation."""

from __future__ import annotations

import pytest

from pg_backup.core.errors import ParamError
from pg_backup.core.params import SEED_MAX, drill_choice, flag


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], "no"])
def test_flag_refuses_everything_but_a_boolean(value):
    """bool("false") is True: a REST conf of force: "false" must not mean force."""
    with pytest.raises(ParamError, match="param 'force' must be true or false"):
        flag({"force": value}, "force")


def test_flag_reads_booleans_and_defaults_to_false():
    """True and False pass as they are; an absent flag is false."""
    assert flag({"force": True}, "force") is True
    assert flag({"force": False}, "force") is False
    assert flag({}, "dry_run") is False


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": SEED_MAX + 1}, "seed"),
        ({"seed": 10**40}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"seed": True}, "seed"),
        ({"backup_id": 5}, "backup_id"),
        ({"backup_id": "x" * 101}, "backup_id"),
    ],
)
def test_drill_params_out_of_range_are_refused_naming_the_param(params, field):
    """A seed outside 0..2**32-1 or a backup id that cannot be one is a ParamError naming it."""
    with pytest.raises(ParamError, match=f"param '{field}'"):
        drill_choice(params)


def test_drill_params_in_range_pass():
    """None, the bounds and a backup id come back as given."""
    assert drill_choice({}) == (None, None)
    assert drill_choice({"seed": 0, "backup_id": ""}) == (0, None)
    assert drill_choice({"seed": SEED_MAX, "backup_id": "v_20261130T020000Z_scheduled"}) == (
        SEED_MAX,
        "v_20261130T020000Z_scheduled",
    )
