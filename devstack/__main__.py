"""`python -m devstack run|demo` (what `make run` and `make demo` call)."""

import sys

from devstack import demo


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if command == "demo":
        demo.run_demo()
    elif command == "run":
        demo.run_foreground()
    else:
        sys.exit(f"usage: python -m devstack run|demo (got {command!r})")


main()
