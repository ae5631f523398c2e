"""docs/cli-reference.md is what tools/write_cli_reference.py builds from the command line's
parsers: a changed option, help text or default makes this fail until the page is rewritten."""

from __future__ import annotations

from conftest import load_script


def test_the_cli_reference_page_is_up_to_date() -> None:
    module = load_script("tools/write_cli_reference.py")
    expected = module.cli_reference()
    assert "## asdseg segment" in expected and "`--roi-space`" in expected
    assert module.PAGE.read_text(encoding="utf-8") == expected, (
        "docs/cli-reference.md is stale: run python tools/write_cli_reference.py"
    )
