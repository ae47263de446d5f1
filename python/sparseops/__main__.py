"""`python -m sparseops info` prints what this build has and uses."""
import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparseops")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print version, ISA and CUDA facts as JSON")
    args = p.parse_args(argv)
    if args.cmd == "info":
        import sparseops

        print(json.dumps(sparseops.info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
