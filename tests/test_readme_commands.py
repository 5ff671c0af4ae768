"""Every command in README.md's fenced shell blocks parses with the parser of the script or subcommand it runs.

Recognised forms (after `\\` continuations are joined and `&&` / `;` chains split): `python[3] examples/X.py ...`,
`accelerate launch [accelerate flags] examples/X.py ...` and `diffusers-spectrum SUBCOMMAND ...`, with optional
leading `VAR=value` environment assignments. `pip install` and pytest lines are skipped. Placeholders such as
`<user>/spectrum-vae` or `$OUT` become dummies; a whole-word placeholder (`--train_data_dir <images>`) becomes an
existing empty folder, since scripts check data paths as they parse. An example script is a thin wrapper: its
`parse_args` (or the function it calls) lives in a library module, whose `build_parser()` is used when it has one
(pure argparse, no checks of installed extras); otherwise its parse function. An argparse error fails the test with
the command shown.
"""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from diffusers_spectrum.cli import SUBCOMMANDS


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}  # plain ``` fences hold output or trees, not commands
COMMAND_HINT = re.compile(r"examples/\S+\.py|diffusers-spectrum")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
WHOLE_PLACEHOLDER = re.compile(r"(?<!\S)<[^<>\n]+>(?!\S)")  # a whole word, e.g. `--train_data_dir <images>`
PLACEHOLDER_DIR = "__README_PLACEHOLDER_DIR__"  # becomes an existing empty folder (scripts check data paths)
VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_lines(text: str) -> list[str]:
    """The logical lines of the fenced shell blocks: continuations joined, comments and prompts dropped."""
    lines, block, pending = [], False, ""
    for raw in text.splitlines():
        fence = FENCE.match(raw.strip())
        if fence:
            block = not block and fence.group(1).lower() in SHELL_LANGUAGES
            pending = ""
            continue
        if not block:
            continue
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def commands(text: str) -> list[list[str]]:
    """Token lists of the recognised commands (see the module docstring), placeholders substituted."""
    found = []
    for line in shell_lines(text):
        if not COMMAND_HINT.search(line):
            continue
        line = VARIABLE.sub("dummy", PLACEHOLDER.sub("dummy", WHOLE_PLACEHOLDER.sub(PLACEHOLDER_DIR, line)))
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            words = list(lexer)
        except ValueError as error:  # broken quoting in a README command: reported by the parse test
            found.append(["<unparsable>", f"{error}: {line}"])
            continue
        segments, current = [], []
        for word in words:
            if word in ("&&", ";", "||", "|", "&"):
                segments.append(current)
                current = []
            else:
                current.append(word)
        for tokens in segments + [current]:
            while tokens and ASSIGNMENT.match(tokens[0]):
                tokens = tokens[1:]
            if not tokens or tokens[0] in ("pip", "pip3", "pytest") or "pytest" in tokens[:3]:
                continue
            if tokens[0] == "diffusers-spectrum" or _script_index(tokens) is not None:
                found.append(tokens)
    return found


def _script_index(tokens: list[str]) -> int | None:
    """Position of `examples/X.py` in a `python ...` or `accelerate launch ...` command, else None."""
    launcher = tokens[0] in ("python", "python3") or tokens[:2] == ["accelerate", "launch"]
    for i, token in enumerate(tokens):
        if launcher and token.startswith("examples/") and token.endswith(".py"):
            return i
    return None


def _with_parser(module, parse_name: str):
    """`module.build_parser().parse_args` when the module has it, else `module.<parse_name>`."""
    build = getattr(module, "build_parser", None)
    return build().parse_args if callable(build) else getattr(module, parse_name)


def parse_function(tokens: list[str]):
    """`(parse(argv), argv)` for a command: the library parser behind the script or subcommand."""
    assert tokens[0] != "<unparsable>", f"a README command cannot be split into words: {tokens[1]}"
    if tokens[0] == "diffusers-spectrum":
        assert len(tokens) > 1 and tokens[1] in SUBCOMMANDS, f"unknown subcommand in: {shlex.join(tokens)}"
        module_name, parse_name, _, _ = SUBCOMMANDS[tokens[1]]
        module = importlib.import_module(module_name)
        return _with_parser(module, parse_name or "parse_args"), tokens[2:]
    index = _script_index(tokens)
    script = ROOT / tokens[index]
    assert script.is_file(), f"the README runs {tokens[index]}, which does not exist"
    spec = importlib.util.spec_from_file_location(f"readme_example_{script.stem}", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # thin wrappers: imports only, the run is under `if __name__ == "__main__"`
    parse = getattr(example, "parse_args", None) or getattr(example, "parse_vae_args", None)
    if parse is None:
        parse = next(getattr(example, name) for name in dir(example) if name.startswith("parse_"))
    library = importlib.import_module(parse.__module__)
    parse = _with_parser(library, parse.__name__) if library is not example else parse
    return parse, tokens[index + 1 :]


README_COMMANDS = commands(README.read_text(encoding="utf-8")) if README.is_file() else []


def test_the_readme_has_commands_to_check():
    assert README.is_file(), "README.md is missing"
    assert README_COMMANDS, "no `python examples/...`, `accelerate launch ...` or `diffusers-spectrum ...` command"


@pytest.mark.parametrize("tokens", README_COMMANDS, ids=[" ".join(t[:3])[:60] for t in README_COMMANDS])
def test_readme_command_parses_with_its_parser(tokens, tmp_path, monkeypatch):
    parse, argv = parse_function(tokens)
    argv = [str(tmp_path) if word == PLACEHOLDER_DIR else word for word in argv]
    # The README's commands build on each other (runs/vae, then runs/latents, ...): parse them in a folder where the
    # relative outputs of the earlier commands exist, as they do when the README is followed in order.
    monkeypatch.chdir(tmp_path)
    for word in argv:
        if word.startswith(("runs/", "spectrum-demo")):
            (tmp_path / word).mkdir(parents=True, exist_ok=True)
    try:
        parse(argv)
    except SystemExit as error:
        pytest.fail(f"argparse rejected the README command (exit {error.code}):\n  {shlex.join(tokens)}")


def test_the_extraction_handles_continuations_placeholders_and_chains():
    text = "\n".join(
        [
            "```bash",
            "pip install -e . && diffusers-spectrum demo --output_dir <out dir>",
            "HF_HUB_OFFLINE=1 python3 -m pytest -q tests",
            "# a comment",
            "accelerate launch --num_processes 2 examples/train_spectrum_vae.py --hub_model_id <user>/vae \\",
            "    --output_dir $OUT  # trailing comment",
            "```",
            "```python",
            "python examples/sample.py --not_a_shell_block",
            "```",
        ]
    )
    assert commands(text) == [
        ["diffusers-spectrum", "demo", "--output_dir", PLACEHOLDER_DIR],
        [
            "accelerate",
            "launch",
            "--num_processes",
            "2",
            "examples/train_spectrum_vae.py",
            "--hub_model_id",
            "dummy/vae",
            "--output_dir",
            "dummy",
        ],
    ]
    parse, argv = parse_function(["diffusers-spectrum", "analyze", "--vae", "x", "--output_dir", "y", "--bogus"])
    with pytest.raises(SystemExit):
        parse(argv)  # an unknown flag is caught: the check can fail
