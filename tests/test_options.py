"""``options``: checks, one ``validate``, and the command line built from the dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from dynsparse import cli, errors, options


@dataclasses.dataclass(frozen=True)
class _Toy:
    name: str = options.option(help="a name")
    count: int = options.option(3, help="how many", check=options.integer(1))
    rate: float = options.option(0.5, help="a rate", check=options.number(0.0, 1.0))
    sizes: tuple[int, ...] = options.option((8, 8), help="widths", check=options.widths())
    fast: bool = options.option(False, help="go fast", check=options.boolean())
    mode: str = options.option("a", help="the mode", check=options.one_of("a", "b"), flag="--toy-mode")
    limit: int | None = options.option(None, help="a limit", check=options.optional(options.integer(0)))

    def _cross_check(self) -> "_Toy":
        if self.fast and self.mode == "b":
            raise errors.UserError("fast needs mode a")
        return dataclasses.replace(self, name=self.name.strip())


@pytest.mark.parametrize("check, good, bad, allowed", [
    (options.integer(1), [1, 7], [0, -1, 1.5, True, "3"], "an integer > 0"),
    (options.integer(0), [0, 5], [-1], "an integer >= 0"),
    (options.number(0.0), [1e-12, 3], [0, -1.0, math.nan, math.inf, True], "a finite number > 0"),
    (options.number(0.0, 1.0), [0.2], [0.0, 1.0], "a number in (0, 1)"),
    (options.boolean(), [True, False], [0, "yes"], "true or false"),
    (options.one_of("x", "y"), ["x"], ["z", None], "x, y"),
    (options.widths(), [(1, 2), [3]], [(), (0,), (1.5,)], "integers > 0, comma-separated"),
    (options.widths(empty=True), [()], [(-1,)], "integers > 0, comma-separated"),
    (options.integers(0), [(0, 5)], [(), (-1,)], "integers >= 0"),
    (options.seed(), [0, 2**32 - 1], [-1, 2**32], "an integer in 0 .. 2**32 - 1"),
    (options.optional(options.integer(1)), [None, 2], [0], "an integer > 0 (or none)"),
])
def test_checks_accept_and_refuse_with_one_message(check, good, bad, allowed):
    for value in good:
        check("opt", value)
    for value in bad:
        with pytest.raises(errors.UserError) as info:
            check("opt", value)
        assert str(info.value) == f"opt {value!r} is not allowed; allowed: {allowed}" or allowed in str(info.value)
        assert str(info.value).startswith(f"opt {value!r} is not allowed; allowed: ")


def test_checks_convert_and_parse_command_line_words():
    assert options.integer(1)("n", 3) == 3 and type(options.number(0.0)("x", 2)) is float
    assert options.widths().from_text("32,16") == (32, 16) and options.integers(0).from_text("0,2") == (0, 2)
    assert options.integer(1).from_text("4") == 4
    for check, text in [(options.integer(1), "0"), (options.integer(1), "x"), (options.widths(), "32,x"), (options.number(0.0), "nan")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"{text!r} is not allowed; allowed: "):
            check.from_text(text)


def test_via_keeps_the_domain_message_and_value():
    def beta(v):
        if not 0 <= float(v) <= 2:
            raise errors.UserError(f"beta {v!r} is out of range")
        return float(v)

    check = options.via(beta, "0 <= beta <= 2", float)
    assert check("b", 1) == 1.0 and check.from_text("2") == 2.0
    with pytest.raises(errors.UserError, match="beta 3 is out of range"):
        check("b", 3)
    with pytest.raises(argparse.ArgumentTypeError, match="beta 3.0 is out of range"):
        check.from_text("3")
    with pytest.raises(errors.UserError, match="b 'x' is not allowed; allowed: 0 <= beta <= 2"):
        check("b", "x")  # float('x') raised ValueError: named as the option's refusal
    assert options.via(lambda v: None, "anything")("c", 5) == 5  # a checker returning None keeps the value


def test_validate_runs_field_checks_then_the_cross_check():
    toy = options.validate(_Toy(name=" t ", sizes=[4]))
    assert toy.name == "t" and toy.sizes == (4,)
    with pytest.raises(errors.UserError, match="^toy-mode 'c' is not allowed; allowed: a, b$"):  # the flag names it
        options.validate(_Toy(name="t", mode="c"))
    with pytest.raises(errors.UserError, match="^count 0 is not allowed"):
        options.validate(_Toy(name="t", count=0, mode="c"))  # fields in order: the first bad one
    with pytest.raises(errors.UserError, match="fast needs mode a"):
        options.validate(_Toy(name="t", fast=True, mode="b"))


def test_the_command_line_takes_defaults_and_help_from_the_dataclass():
    p = argparse.ArgumentParser()
    for name in ("count", "rate", "sizes", "fast", "mode", "limit"):
        options.add_argument(p, _Toy, name)
    options.add_argument(p, _Toy, "name", flag="--upper", const="UPPER")
    helps = {a.dest: a.help for a in p._actions}
    assert helps["count"] == "how many (default 3)" and helps["sizes"] == "widths (default 8,8)"
    assert helps["fast"] == "go fast" and helps["limit"] == "a limit"
    assert options.from_args(_Toy, p.parse_args([]), name="n") == _Toy(name="n")  # nothing given: the dataclass's defaults
    args = p.parse_args(["--count", "5", "--sizes", "4,2", "--fast", "--toy-mode", "b", "--upper"])
    assert options.given(_Toy, args) == {"count": 5, "sizes": (4, 2), "fast": True, "mode": "b", "name": "UPPER"}
    base = _Toy(name="x", rate=0.25)
    assert options.from_args(_Toy, p.parse_args(["--count", "2"]), base=base) == dataclasses.replace(base, count=2)
    with pytest.raises(SystemExit):
        p.parse_args(["--count", "0"])


def test_preset_keywords_show_the_functions_default():
    def preset(seed: int = 7, folder: str | None = None) -> None:
        pass

    p = argparse.ArgumentParser()
    options.add_parameter(p, preset, "seed", help="the seed", check=options.seed())
    options.add_parameter(p, preset, "folder", help="a folder")
    helps = {a.dest: a.help for a in p._actions}
    assert helps == {"help": helps["help"], "seed": "the seed (default 7)", "folder": "a folder"}
    assert p.parse_args([]).seed is None and p.parse_args(["--seed", "3"]).seed == 3


def _namespace(*argv: str) -> argparse.Namespace:
    return cli._parser(cli._command_in(argv)).parse_args(argv)


def test_cli_defaults_are_the_dataclasses_own():
    """Leaving every option out builds exactly the dataclass's default configuration (no second copy)."""
    from dynsparse import analysis, collect
    from dynsparse.learn import model, run
    from dynsparse.policies import ppo_train

    assert options.from_args(analysis.AnalyzeOptions, _namespace("analyze", "d.zarr", "--out", "o")) == analysis.AnalyzeOptions()
    assert options.from_args(collect.CollectConfig, _namespace("collect", "CartpoleBalance", "--out", "o")) == \
        collect.CollectConfig(env="CartpoleBalance")
    learn = _namespace("learn", "d.zarr", "--out", "o")
    assert options.from_args(run.LearnOptions, learn) == run.LearnOptions()
    assert options.from_args(model.TrainOptions, learn) == model.TrainOptions()
    assert options.given(ppo_train.TrainConfig, _namespace("train-policy", "CartpoleBalance", "--out", "o")) == {"env": "CartpoleBalance"}
    args = _namespace("analyze", "d.zarr", "--out", "o", "--relative", "--no-tsne", "--pdf", "--threshold", "1e-9")
    got = options.from_args(analysis.AnalyzeOptions, args).validated()
    assert (got.kind, got.tsne, got.formats, got.threshold) == ("relative", False, ("png", "svg", "pdf"), 1e-9)


def test_every_option_has_help_and_the_subcommand_is_found_past_global_values():
    from dynsparse import analysis, collect, sweep
    from dynsparse.learn import model, run
    from dynsparse.policies import ppo_train

    for cls in (analysis.AnalyzeOptions, collect.CollectConfig, run.LearnOptions, model.TrainOptions,
                ppo_train.TrainConfig, sweep.SweepConfig):
        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get(options.HELP)]
        assert missing == [], f"{cls.__name__}: options without help: {missing}"
    assert cli._command_in(["--menagerie", "collect", "-v", "analyze", "x"]) == "analyze"
    assert cli._command_in(["--jax-cache=off", "report"]) == "report" and cli._command_in(["--help"]) is None
