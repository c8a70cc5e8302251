#!/usr/bin/env python3
"""A realistic benchmark corpus: mixed-length English lines (5 to 120 words) cut from text every
machine with Python has, with a fixed seed, so that two runs on two machines read the same lines.

Sources: the docstrings of the Python standard library (the interpreter running this script) and
the licence texts in /usr/share/common-licenses when present. Lengths follow a long-tailed mix, as
search and RAG workloads see: many short lines, fewer paragraphs.

usage: corpus.py --lines N --out FILE [--seed S]
"""
import argparse
import ast
import random
import re
import sys
import sysconfig
from pathlib import Path

MIN_WORDS, MAX_WORDS = 5, 120


def docstrings():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts[-2:] or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def licences():
    folder = Path("/usr/share/common-licenses")
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file():
                yield path.read_text(encoding="utf-8", errors="replace")


def words_of(texts):
    """Every prose word in order: text with few letters (tables, code) is skipped."""
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            words = paragraph.split()
            letters = sum(c.isalpha() for c in paragraph)
            if words and letters > 0.6 * len(paragraph.replace(" ", "")):
                yield from words


def length(rng):
    """Words in a line: mostly sentence-sized, with a tail of paragraphs up to MAX_WORDS."""
    if rng.random() < 0.6:
        return rng.randint(MIN_WORDS, 30)
    return rng.randint(31, MAX_WORDS)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()
    words = list(words_of(list(docstrings()) + list(licences())))
    if len(words) < MAX_WORDS * 10:
        sys.exit(f"only {len(words)} words of text found")
    rng = random.Random(args.seed)
    lines = []
    while len(lines) < args.lines:
        n = length(rng)
        start = rng.randrange(0, len(words) - n)
        lines.append(" ".join(words[start:start + n]))
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts = [len(line.split()) for line in lines]
    print(f"{len(lines)} lines, {min(counts)}-{max(counts)} words, "
          f"mean {sum(counts) / len(counts):.1f}, from {len(words)} words of text", file=sys.stderr)


if __name__ == "__main__":
    main()
