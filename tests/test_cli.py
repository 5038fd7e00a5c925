"""The command line as a user meets it: bad input refused with exit code 2 and the valid
choices, a help text for every option, progress on stderr only, and every ``--json`` with
an overall verdict and stable machine keys. Then the package's metadata: ``py.typed``,
one version, the licence.

Self-contained: imports nothing from the other test modules.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib

import pytest

import entroloss as el
from entroloss.__main__ import LIBRARIES, LOSS_NAMES, build_parser
from entroloss.tools.training import SETTINGS
from tests.helpers.cli import nudged_math_env, run_cli


_cli = run_cli


# --- bad input: exit code 2 and the valid choices --------------------------------------------

@pytest.mark.parametrize("args, choices", [
    (("demo", "--loss", "bogus"), LOSS_NAMES),
    (("demo", "--backend", "tensorflow"), LIBRARIES),
    (("verify", "--backend", "tensorflow"), LIBRARIES),
    (("verify", "--device", "tpu"), ("cpu", "cuda", "gpu")),
    (("bench", "--dtype", "float64"), ("float32", "bfloat16", "float16")),
])
def test_bad_choice_exits_2_and_lists_the_choices(args, choices):
    out = _cli(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert "invalid choice" in out.stderr
    for choice in choices:
        assert repr(choice) in out.stderr, (choice, out.stderr)


@pytest.mark.parametrize("args, message", [
    (("bench", "--shape", "64y8"), "NxC"),
    (("bench", "--shape", "0x8"), "at least 1"),
    (("bench", "--repeats", "0"), "at least 1"),
    (("bench", "--chunk-size", "-5"), "at least 1"),
    (("demo", "--epochs", "0"), "at least 1"),
    (("demo", "--epochs", "many"), "not an integer"),
    (("frobnicate",), "invalid choice"),
])
def test_malformed_values_exit_2_with_the_reason(args, message):
    out = _cli(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize("given, name", [
    ("min_ent", "min_ent"), ("MIN-ENT", "min_ent"), ("min-ent", "min_ent"),
    ("MIN-ENT (0.1 H)", "min_ent"), ("MIX-ENT (0.02 R)", "mix_ent"),
    ("adaptive CE", "adaptive_ce"), ("Cross Entropy", "cross_entropy"),
    ("label smoothing 0.1", "cross_entropy"), ("focal gamma=2", "focal"),
])
def test_demo_loss_takes_function_names_and_the_tables_labels(given, name):
    assert build_parser().parse_args(["demo", "--loss", given]).loss == [name]


def test_every_row_label_of_the_demo_is_an_alias_of_its_function():
    for setting in SETTINGS:
        args = build_parser().parse_args(["demo", "--loss", setting.label])
        assert args.loss == [setting.loss.name]


# --- help texts and choices -------------------------------------------------------------------

def _subparsers():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices


def test_there_are_the_three_commands():
    assert set(_subparsers()) == {"verify", "demo", "bench"}


@pytest.mark.parametrize("command", ["verify", "demo", "bench"])
def test_every_option_has_a_help_text_and_its_choices_in_the_help(command):
    sub = _subparsers()[command]
    helped = sub.format_help()
    assert sub.description
    for action in sub._actions:
        if not action.option_strings:
            continue
        assert action.help and action.help is not argparse.SUPPRESS, action.option_strings
        assert len(action.help) > 15, (action.option_strings, action.help)
        for choice in action.choices or ():
            assert choice in helped, (command, action.option_strings, choice)


def test_help_exits_0_and_names_the_choices():
    out = _cli("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("verify", "demo", "bench"))
    out = _cli("demo", "--help")
    assert out.returncode == 0
    assert "{" + ",".join(LOSS_NAMES) + "}" in out.stdout
    assert "MIN-ENT" in out.stdout  # the labels are explained as aliases
    out = _cli("bench", "--help")
    assert out.returncode == 0 and "{float32,bfloat16,float16}" in out.stdout


# --- verify: progress on stderr, the table unchanged, the verdict in --json -------------------

HEADER_START = f"{'backend':<18}{'dtype':<10}" + f"{'cross_entropy':>22}"
# NumPy's verify: every loss of the registry x 3 dtypes x 4 cases (index, soft, ...)
CHECKS = len(LOSS_NAMES) * 3 * 4


def test_verify_shows_progress_on_stderr_and_keeps_stdout_the_table():
    out = _cli("verify", "--backend", "numpy")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "loading the installed backends ..."
    assert lines[1:] == ["[0/3] numpy float64", "[1/3] numpy float32", "[2/3] numpy float16",
                         "[3/3] done"]
    table = out.stdout.splitlines()
    assert table[0].startswith(HEADER_START) and table[0].endswith("  status")
    assert table[-1] == f"{CHECKS} checks, 0 mismatches"
    assert "[" not in "".join(table[3:6])  # no progress mixed into the rows


def test_verify_json_has_the_verdict_and_no_progress():
    out = _cli("verify", "--backend", "numpy", "--json")
    assert out.returncode == 0, out.stderr
    assert "[0/" not in out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True and data["mismatches"] == 0
    assert data["checks"] == len(data["rows"]) == CHECKS


def test_verify_json_counts_the_mismatches(tmp_path):
    # a sitecustomize that nudges the shared forward by 1e-3 makes every check fail
    env = nudged_math_env(tmp_path)
    out = _cli("verify", "--backend", "numpy", "--json", env=env)
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is False
    assert data["mismatches"] == sum(not r["ok"] for r in data["rows"]) > 0


# --- demo --json: stable machine keys ------------------------------------------------------

def test_demo_json_rows_carry_the_function_and_its_options():
    out = _cli("demo", "--json", "--epochs", "1", "--loss", "MIN-ENT", "--loss", "cross_entropy")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no progress under --json
    data = json.loads(out.stdout)
    assert data["ok"] is True and data["backend"] == "numpy" and data["epochs"] == 1
    assert data["losses"] == ["cross_entropy", "min_ent"]
    rows = [(r["label"], r["loss"], r["options"]) for r in data["results"]]
    assert rows == [("cross entropy", "cross_entropy", {}),
                    ("label smoothing 0.1", "cross_entropy", {"label_smoothing": 0.1}),
                    ("MIN-ENT (0.1 H)", "min_ent", {"entropy_weight": 0.1})]
    for r in data["results"]:
        assert {"accuracy", "nll", "ece", "entropy", "seconds"} <= set(r)
        # the keys are enough to make the call again
        assert getattr(el, r["loss"]) is not None
        assert set(r["options"]) <= set(_options_of(r["loss"]))


def _options_of(name):
    import inspect

    return inspect.signature(getattr(el, name)).parameters


# --- bench --json ---------------------------------------------------------------------------

def test_bench_json_has_the_verdict_and_what_ran():
    out = _cli("bench", "--backend", "numpy", "--shape", "16x4", "--repeats", "3", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["ok"] is True
    ran = data["ran"]
    assert ran["shapes"] == [[16, 4]] and ran["dtypes"] == ["float32"] and ran["repeats"] == 3
    assert ran["platforms"] == ["numpy"] and ran["timings"] == len(data["rows"]) > 0


def test_bench_with_nothing_to_time_says_so():
    pytest.importorskip("array_api_strict")
    out = _cli("bench", "--backend", "array_api_strict", "--json")  # never timed
    assert out.returncode == 2, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is False
    assert "nothing to time" in out.stderr


# --- packaging --------------------------------------------------------------------------------

def test_the_installed_package_is_typed():
    package = pathlib.Path(el.__file__).parent
    assert (package / "py.typed").is_file()


def test_one_version():
    assert el.__version__ == importlib.metadata.version("entroloss")


def test_the_licence_ships_with_the_metadata():
    dist = importlib.metadata.distribution("entroloss")
    files = [str(f) for f in dist.files or ()]
    licences = [f for f in files if pathlib.PurePath(f).name == "LICENSE"]
    assert licences, files
    text = dist.locate_file(licences[0]).read_text()
    assert "MIT License" in text and "the entroloss authors" in text


def test_the_project_urls_are_in_the_metadata():
    urls = importlib.metadata.metadata("entroloss").get_all("Project-URL") or []
    labels = {u.split(",")[0].strip().lower() for u in urls}
    assert {"homepage", "source", "issues", "documentation", "changelog"} <= labels, urls


# --- the docs site: browsable from disk, no CDN ---------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mkdocs_config() -> dict:
    yaml = pytest.importorskip("yaml")
    if not (ROOT / "mkdocs.yml").is_file():
        pytest.skip("not a source checkout")
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_the_docs_config_is_offline_and_uses_file_urls():
    config = _mkdocs_config()
    assert config["use_directory_urls"] is False
    assert {"pymdownx.arithmatex": {"generic": True}} in config["markdown_extensions"]
    assets = (config["extra_javascript"] + config["extra_css"]
              + config.get("extra", {}).get("polyfills", []))
    assert any("katex" in a for a in assets)
    for asset in assets:  # shipped with the site, not fetched
        assert "://" not in asset and (ROOT / "docs" / asset).is_file(), asset
    assert len(list((ROOT / "docs/assets/katex/fonts").glob("*.woff2"))) >= 20


def test_the_built_site_links_files_and_loads_nothing_remote():
    import re

    site = ROOT / "site"
    if not (site / "index.html").is_file():
        pytest.skip("the site is not built (make docs)")
    for page in site.glob("*.html"):
        if page.name == "404.html":  # a server's page, with absolute links by design
            continue
        text = page.read_text()
        for link in re.findall(r'href="([^"#]+)', text):
            if "://" in link or link.startswith("mailto:"):
                continue
            assert (page.parent / link).is_file(), (page.name, link)  # a file, not a folder
        for remote in re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text):
            raise AssertionError(f"{page.name} loads {remote}")
    math = (site / "math.html").read_text()
    assert math.count('class="arithmatex"') > 50
