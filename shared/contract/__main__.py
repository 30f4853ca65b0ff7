"""`python -m shared.contract [--check] [DIR]`: write the contract documents to DIR (default
`docs/api/`), or with `--check` exit 1 naming each committed copy that differs from the code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.contract import all_documents, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.contract")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("directory", nargs="?", default="docs/api", type=Path)
    args = parser.parse_args(argv)
    stale = []
    for name, document in all_documents().items():
        path = args.directory / name
        text = render(document)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print("stale (run `make docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
