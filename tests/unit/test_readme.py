"""README.md stays short, and its quickstart is the script the integration tests run."""

import re

from ..utils import REPO_ROOT

README = REPO_ROOT / "README.md"
SCRIPT = REPO_ROOT / "examples" / "quickstart" / "quickstart.sh"


def script_commands() -> list:
    """The commands of the quickstart script, continuation lines joined, with its output folder
    and its own folder spelled as the README spells them."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            line = line.replace("$out", "outputs/quickstart").replace(
                "$here", "examples/quickstart"
            )
            commands.append(" ".join(line.split()))
    return commands


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_quickstart_commands_are_those_of_the_tested_script():
    block = re.search(r"<!-- quickstart:.*?-->\n```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no quickstart block after its `<!-- quickstart: ... -->` line"
    shown = [" ".join(line.split()) for line in block[1].splitlines() if line.strip()]
    assert len(shown) >= 6
    missing = [command for command in shown if command not in script_commands()]
    assert not missing, f"README quickstart commands not in {SCRIPT.name}: {missing}"
