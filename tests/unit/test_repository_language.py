"""The repository speaks of the software, not of how it came about.

Documentation (README, CHANGELOG, docs/, every Markdown file, the benchmark report) and the
comments and docstrings of the code, configs, examples, benchmarks and tests must not use
development-process language: numbered work sessions or development rounds, commit hashes or
run dates given as evidence, the time of day a measurement was taken in, or documents that are
not in the repository. That history belongs in git. Code itself is not scanned: the benchmarks
have `--rounds` options and print "round" lines, and hexadecimal numbers and dates appear in code
legitimately.
"""

import ast
import io
import re
import subprocess
import tokenize
from typing import Iterator, List, Tuple

import pytest

from ..utils import REPO_ROOT

# (what the phrase is, the pattern that finds it), case-insensitive
PATTERNS: List[Tuple[str, re.Pattern]] = [
    (what, re.compile(pattern, re.IGNORECASE))
    for what, pattern in (
        (
            "a work session",
            r"\bsessions?\s+(?:\d+|N)\b"
            r"|\b(?:this|that|last|previous|next|earlier|later|same)\s+session\b",
        ),
        (
            "a numbered development round",
            r"\bround\s+(?:\d+|N)\s+of\s+(?:the\s+)?(?:development|work)\b"
            r"|\bdevelopment\s+rounds?\s+(?:\d+|N)\b"
            r"|\bin\s+rounds?\s+(?:\d+|N)(?:\s+of\s+(?:the\s+)?(?:development|work))?\b",
        ),
        (
            "a commit hash as evidence",
            r"\b(?:commit|commits|at|since|HEAD|in|from|before|after|until)\s+`?"
            r"(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b",
        ),
        ("a run date as evidence", r"\b20\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b"),
        (
            "the time of a measurement",
            r"\b(?:quiet|quieter|quietest|noisy|noisier|noisiest|busy|busier|calm|calmer|slow"
            r"|slower|fast|faster)\s+(?:hours?|periods?|phases?|spells?|nights?|mornings?"
            r"|evenings?)\b",
        ),
        (
            "a document not in the repository",
            r"\bspec\s*§|§\s*\d+(?:\.\d+)*\s+of\s+the\s+spec|\breann_spec\b|\bthe\s+spec\b"
            r"|\bspec\.md\b",
        ),
    )
]

# where comments start, by file kind
HASH_COMMENTS = (".yaml", ".yml", ".sh", ".toml", ".cmake", ".lammps", ".cfg")
C_COMMENTS = (".cpp", ".cc", ".c", ".h", ".hpp")
PROSE = (".md", ".rst", ".txt")
HASH_COMMENT_NAMES = ("Makefile", "CMakeLists.txt", "in.lammps", ".yamllint", ".gitignore", "run")


def python_comments_and_docstrings(source: str) -> Iterator[Tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    first = body[0].lineno
                    for offset, line in enumerate(body[0].value.value.splitlines()):
                        yield first + offset, line


def c_comments(source: str) -> Iterator[Tuple[int, str]]:
    """(line, text) of every // and /* */ comment of a C or C++ file."""
    for match in re.finditer(r"//[^\n]*|/\*.*?\*/", source, re.S):
        first = source.count("\n", 0, match.start()) + 1
        for offset, line in enumerate(match.group().splitlines()):
            yield first + offset, line


def hash_comments(source: str) -> Iterator[Tuple[int, str]]:
    """(line, text) after the first # of every line (YAML, shell, CMake, make, LAMMPS input)."""
    for number, line in enumerate(source.splitlines(), start=1):
        if "#" in line:
            yield number, line[line.index("#") :]


def text_to_scan(path) -> Iterator[Tuple[int, str]]:
    """(line, text) of what a file says in words: all of a document, the comments and
    docstrings of code; nothing of data files."""
    source = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix in PROSE:
        yield from enumerate(source.splitlines(), start=1)
    elif path.suffix == ".py":
        yield from python_comments_and_docstrings(source)
    elif path.suffix in C_COMMENTS:
        yield from c_comments(source)
    elif path.suffix in HASH_COMMENTS or path.name in HASH_COMMENT_NAMES:
        yield from hash_comments(source)


def findings(path, root=REPO_ROOT) -> List[str]:
    """``file:line: what: 'phrase'`` for every development-process phrase in ``path``."""
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    found = []
    for number, text in text_to_scan(path):
        for what, pattern in PATTERNS:
            for match in pattern.finditer(text):
                found.append(f"{shown}:{number}: {what}: {match.group()!r}")
    return found


def repository_files() -> List:
    """The files of the repository (tracked or new, not ignored), without symbolic links."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    paths = [REPO_ROOT / name for name in listed if name]
    return [path for path in paths if path.is_file() and not path.is_symlink()]


def test_repository_has_no_development_process_language():
    found = [line for path in repository_files() for line in findings(path)]
    assert not found, "development-process language:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "This was measured in round 3 of development, on a faster kernel.",
        "Since development round 2 the kernel caches its blocks.",
        "The float64 path got 5 % faster in round 7.",
        "Fixed in session 12 (see Session N notes).",
        "The training path did not change this session.",
        "float64 stayed within 2x in a slow hour of the host.",
        "Best of four runs at 7f118fe, measured 2026-12-03 in a quiet hour.",
        "As the spec §4.6 says, restarts are broken upstream.",
    ],
)
def test_a_docs_page_naming_a_development_round_or_session_is_flagged(tmp_path, snippet):
    page = tmp_path / "docs" / "performance.md"
    page.parent.mkdir()
    page.write_text(f"# Performance\n\nSome text.\n{snippet}\n")
    found = findings(page, root=tmp_path)
    assert found and all(line.startswith("docs/performance.md:4: ") for line in found), found


@pytest.mark.parametrize(
    "source",
    [
        '"""Docstring."""\n# measured in round 3 of development\nx = 1\n',
        'def f():\n    """Since commit 7f118fe the cache is faster."""\n',
    ],
)
def test_python_comments_and_docstrings_are_scanned(tmp_path, source):
    module = tmp_path / "module.py"
    module.write_text(source)
    assert findings(module, root=tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "--rounds 3: every worker three times, in rounds of all workers",
        "float64 / float32 in the same round, run by round; the median over 18 rounds",
        "round 1: float32 memory keep 12288 atoms 1 rank(s) images: 13.4 µs/atom-step",
        "the rounding in round(x, 3) and in rounds of 4 calls",
        "hydra.run.dir=outputs/demo/$(date +%Y%m%d-%H%M%S)",
        "the specification of the format, and the species' Gaussians",
        "a session-scoped fixture; a busy machine makes wall times noisy",
    ],
)
def test_legitimate_benchmark_and_code_language_is_not_flagged(tmp_path, text):
    page = tmp_path / "notes.md"
    page.write_text(text + "\n")
    assert findings(page, root=tmp_path) == []


def test_code_strings_are_not_scanned(tmp_path):
    """Only comments and docstrings: a string in code may spell anything (like this test's)."""
    module = tmp_path / "module.py"
    module.write_text('"""Docstring."""\nPHRASE = "in round 3 of development"\n')
    assert findings(module, root=tmp_path) == []
