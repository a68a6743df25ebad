"""The ``rlstack`` command line.

rlstack train RECIPE [key.path=value ...]   train with a local Ray (or the one in RAY_ADDRESS)
rlstack demo [--setup-seconds S]            the embedded GRPO recipe via ray job submit
rlstack bench demo                          the demo, with its figures written to docs/results/
"""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "train":
        from rlstack.train import main as train

        return train(rest)
    if command == "demo":
        from rlstack.demo import main as demo

        return demo(rest)
    if command == "bench":
        from rlstack.bench import main as bench

        return bench(rest)
    print(__doc__, file=sys.stderr)
    return 0 if command in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
