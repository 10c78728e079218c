"""Every command's help shows an example, and every command is documented in the README or docs/."""
import click
from click.testing import CliRunner

from helpers import REPO
from wdr_pipe.cli import cli


def commands(group=cli, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for path in commands():
        res = runner.invoke(cli, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        example = res.output.split("Example", 1)
        assert len(example) == 2 and f"wdr-pipe {' '.join(path)}" in example[1], f"{' '.join(path)}: no example"


def test_every_command_appears_in_the_readme_or_a_doc():
    text = (REPO / "README.md").read_text() + "".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    missing = [" ".join(p) for p in commands() if f"wdr-pipe {' '.join(p)}" not in text]
    assert not missing, f"commands documented nowhere: {missing}"


def test_docs_cli_md_holds_every_commands_current_help():
    from wdr_pipe.cli.helpdoc import BEGIN, END, render

    text = (REPO / "docs" / "cli.md").read_text()
    assert BEGIN in text and END in text
    current = text[text.index(BEGIN):text.index(END) + len(END)]
    assert current == render(), "docs/cli.md is out of date: run 'python -m wdr_pipe.cli.helpdoc docs/cli.md'"


def test_docs_cli_md_holds_the_exit_codes_of_the_code():
    from wdr_pipe.cli.helpdoc import EXIT_BEGIN, EXIT_END, render_exit_codes

    text = (REPO / "docs" / "cli.md").read_text()
    current = text[text.index(EXIT_BEGIN):text.index(EXIT_END) + len(EXIT_END)]
    assert current == render_exit_codes(), "docs/cli.md is out of date: run 'python -m wdr_pipe.cli.helpdoc docs/cli.md'"
