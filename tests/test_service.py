"""The service layer (gptsql.service) that the CLI and the explorer share: the options' rules
written once, and click and the CLI kept inside cli/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gptsql.service import options

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("rule, value, message", [
    (options.max_tokens, "-3", "-3 is not in the range 0<=x<=2147483647."),
    (options.max_tokens, "2147483648", "2147483648 is not in the range 0<=x<=2147483647."),
    (options.max_tokens, "1.5", "'1.5' is not a valid integer."),
    (options.top_k, "ten", "'ten' is not a valid integer."),
    (options.top_p, "0", "0.0 is not in the range 0<x<=1."),
    (options.top_p, "1.5", "1.5 is not in the range 0<x<=1."),
    (options.temperature, "-1", "-1.0 is not in the range x>=0."),
    (options.temperature, "abc", "'abc' is not a valid float."),
    (options.temperature, "nan", "temperature must be a number >= 0 (0 is greedy), got NaN"),
    (options.temperature, "1e-320", "temperature 1e-320 is too close to 0: give 0 for greedy sampling, or at least 0.001"),
    (options.seed, str(2**63), f"{2**63} is not in the range -{2**63}<=x<={2**63 - 1}."),
    (options.workers, "0", "0 is not in the range 1<=x<=64."),
])
def test_each_rule_refuses_in_one_line_without_naming_an_option(rule, value, message):
    with pytest.raises(options.BadValue) as refused:
        rule(value)
    assert str(refused.value) == message


def test_rules_take_text_and_numbers_alike():
    assert options.max_tokens(" 7 ") == 7 and options.max_tokens(7) == 7
    assert options.temperature("0") == 0 and options.temperature(0.5) == 0.5
    assert options.top_p("1") == 1.0 and options.seed("-9223372036854775808") == -2**63


def test_sampling_from_a_form_names_the_fields_label_and_keeps_the_defaults():
    assert options.Sampling.read({"temperature": "0", "seed": "", "top_k": None}) == \
        options.Sampling(temperature=0.0)
    with pytest.raises(options.BadValue, match=r"^Top-p: 0\.0 is not in the range 0<x<=1\.$"):
        options.Sampling.read({"top_p": "0"}, {"top_p": "Top-p"})


@pytest.mark.parametrize("check, message", [
    (lambda: options.block(2, 2), "block must be between 0 and 1 (the model has 2 blocks), not 2"),
    (lambda: options.block(-1, 1, "--block"), "--block must be between 0 and 0 (the model has 1 block), not -1"),
    (lambda: options.head(4, 4), "head must be between 0 and 3 (the model has 4 heads), not 4"),
    (lambda: options.place(9, 9, 3), "place must be between 0 and 8 (the places run 3 recorded), not 9"),
    (lambda: options.places(5, 2, 9, 3), "places must be between 0 and 8 (the places run 3 recorded), "
                                         "the first not after the last; not 5 to 2"),
    (lambda: options.places(0, 9, 9, 3), "not 0 to 9"),
])
def test_windows_of_blocks_heads_and_places(check, message):
    with pytest.raises(options.BadValue) as refused:
        check()
    assert message in str(refused.value)
    assert options.places(2, 4, 9, 3) == range(2, 5) and options.head(3, 4) == 3


def test_the_cli_and_the_page_refuse_a_value_in_the_same_words():
    """The CLI's click type is the rule's: click puts the flag before the same message the page
    puts the field's label before."""
    import click
    from click.testing import CliRunner

    from gptsql.cli.common import TOP_P

    @click.command()
    @click.option("--top-p", type=TOP_P)
    def command(top_p):
        pass

    said = CliRunner().invoke(command, ["--top-p", "1.5"]).output
    assert "Invalid value for '--top-p': 1.5 is not in the range 0<x<=1." in said


def imports(path: Path) -> set[str]:
    """The modules a file imports, relative imports made absolute within gptsql."""
    package = ["gptsql", path.parent.name] if path.parent != REPO / "gptsql" else ["gptsql"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.add(".".join(base + ([node.module] if node.module else [])))
    return found


STARTERS = {"gptsql/__main__.py", "benchmarks/bench.py"}   # they start the CLI, as `gptsql` does


@pytest.mark.parametrize("folder", ["driver", "server", "service", "web", "loader", "reference", "benchmarks",
                                    "plots", "gptsql"])
def test_click_and_the_cli_stay_in_cli(folder):
    """driver/, server/, the service layer and the web app know nothing of the CLI: no click, no
    gptsql.cli (its Context, its options); only the scripts that start the CLI import it."""
    for path in sorted((REPO / folder).glob("*.py")):
        if str(path.relative_to(REPO)) in STARTERS:
            continue
        bad = {name for name in imports(path) if name.split(".")[0] == "click" or name.startswith("gptsql.cli")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
