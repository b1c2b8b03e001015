"""``python -m stack up|down|status|test`` (called by ``./outlink``)."""

from __future__ import annotations

import sys

from stack.layout import Layout


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    lay = Layout.default()
    if command == "up":
        from stack.up import up

        return up(lay)
    if command == "down":
        from stack.status import down

        return down(lay)
    if command == "status":
        from stack.status import print_status

        print_status(lay)
        return 0
    if command == "add-device" and rest:
        from stack.devices import add_device

        return add_device(lay, rest[0], rest[1] if len(rest) > 1 else None)
    if command == "test":
        from stack.testrun import run

        return run(rest)
    print(
        "usage: python -m stack up|down|status|add-device TOKEN [NAME]|test [pytest args]",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
