#!/usr/bin/env python3
"""Compiles every translation unit of a CMake build (its compile_commands.json) with
-fsyntax-only -Werror: GCC parses and instantiates all of the code, our warning flags on,
without the time its optimiser and code generator take.

Usage: scripts/gcc_check.py BUILD_DIR [JOBS]
"""
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Flags that name outputs (objects, dependency files): a syntax check writes none.
OUTPUT_FLAGS = {"-o", "-MF", "-MT", "-MQ"}


def syntax_only(command: str) -> list[str]:
    args, out, skip = shlex.split(command), [], False
    for a in args:
        if skip:
            skip = False
        elif a in OUTPUT_FLAGS:
            skip = True
        elif a not in ("-MD", "-MMD"):
            out.append(a)
    return out + ["-fsyntax-only", "-Werror"]


def check(entry: dict) -> tuple[str, int, str]:
    run = subprocess.run(syntax_only(entry["command"]), cwd=entry["directory"],
                         capture_output=True, text=True)
    return entry["file"], run.returncode, run.stderr


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    database = Path(sys.argv[1]) / "compile_commands.json"
    try:
        entries = json.loads(database.read_text())
    except (OSError, ValueError) as e:
        print(f"gcc-check: cannot read {database}: {e}", file=sys.stderr)
        return 1
    jobs = int(sys.argv[2]) if len(sys.argv) == 3 else 2
    failed = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for file, code, err in pool.map(check, entries):
            status = "ok" if code == 0 else "FAILED"
            print(f"gcc-check: {status} {Path(file).name}", file=sys.stderr)
            if code:
                failed += 1
                print(err, file=sys.stderr)
    print(f"gcc-check: {len(entries) - failed} of {len(entries)} files compile without a "
          "warning", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
