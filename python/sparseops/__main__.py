"""`python -m sparseops info` prints what this build has and uses; `python -m sparseops demo [...]` runs the
main job (sparsify a real model, generate, compare with dense; see `demo --help`)."""
import argparse
import json
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # its own parser (many options)
        from .demo import main as demo_main

        return demo_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m sparseops")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print version, ISA and CUDA facts as JSON")
    sub.add_parser("demo", help="sparsify a real model, generate, and compare with dense (see demo --help)")
    args = p.parse_args(argv)
    if args.cmd == "info":
        import sparseops

        print(json.dumps(sparseops.info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
