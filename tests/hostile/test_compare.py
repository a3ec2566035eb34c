"""``mckd compare``, ``benchmark`` and ``analyse`` given bad tables, names and options."""

from __future__ import annotations

import pytest

from hostile.kit import Case, Cases, World, run_case

CASES = Cases()


def _tables(w: World, name: str, content: bytes):
    folder = w.fresh(name)
    folder.mkdir(parents=True)
    (folder / "subsets.csv").write_bytes(content)
    return folder


GOOD = b"subset,size,acc\nfou,1,0.5\n"


@CASES
def an_empty_table(w: World) -> Case:
    out = w.fresh("comparison")
    return Case(["compare", _tables(w, "empty", b""), _tables(w, "good", GOOD), "--out", out],
                ["subsets.csv", "holds no rows"], [out])


@CASES
def a_binary_table(w: World) -> Case:
    out = w.fresh("comparison")
    return Case(["compare", _tables(w, "good", GOOD), _tables(w, "binary", bytes(range(128, 256))), "--out", out],
                ["subsets.csv", "not a readable CSV table"], [out])


@CASES
def a_metric_that_is_text(w: World) -> Case:
    out = w.fresh("comparison")
    return Case(["compare", _tables(w, "good", GOOD), _tables(w, "text", b"subset,size,acc\nfou,1,high\n"), "--out",
                 out], ["acc is 'high' in"], [out])


@CASES
def a_table_that_is_a_folder(w: World) -> Case:
    folder = w.fresh("folder_table")
    (folder / "subsets.csv").mkdir(parents=True)
    out = w.fresh("comparison")
    return Case(["compare", _tables(w, "good", GOOD), folder, "--out", out], ["subsets.csv", "is a folder"], [out])


@CASES
def a_run_with_a_name_too_long(w: World) -> Case:
    return Case(["compare", w.digits_run, w.root / ("c" * 300)], ["argument run_b", "a name of 300 bytes"], [])


@CASES
def a_comparison_into_a_named_pipe(w: World) -> Case:
    import os

    out = w.fresh("comparison")
    out.mkdir(parents=True)
    os.mkfifo(out / "comparison.png")
    return Case(["compare", w.digits_run, w.other_run, "--out", out], ["comparison.png", "named pipe"],
                [out / "comparison.png"])


@CASES
def benchmark_seeds_beyond_the_seed_range(w: World) -> Case:
    out = w.fresh("benchmark")
    return Case(["benchmark", w.digits_yaml, "--methods", "mckd", "--seeds", "-1", "--out", out],
                ["seed must be in [0, 4294967295]"], [out])


@CASES
def analyse_alpha_values_that_are_not_finite(w: World) -> Case:
    out = w.fresh("analysis")
    return Case(["analyse", "alpha", w.digits_yaml, "--values", "nan", "--out", out], ["alpha nan", "finite"], [out])


@pytest.mark.parametrize("build", CASES.params())
def test_compare_refuses_bad_input_in_one_line(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
