"""Benchmarks: `python -m sparseops.bench SUITE [options]` (see `--help`).

A suite is a module here, registered in SUITES, exposing:
  DESCRIPTION, add_arguments(parser), run(args, h: harness.Harness) -> rows (list of dicts),
  COLUMNS (harness.Column list for the table), FRACTIONS ((rate, fraction, "bw"|"peak") filled in by the
  harness once the roofline is final), and optionally check_args(args) (validate before anything is measured),
  machine_dtypes(args), summary(rows) -> str, plot(rows, path) -> None or a message saying why no plot.
The harness does the rest: machine facts and roofline, the table, --json, --plot.
"""
SUITES = {
    "nm": "sparseops.bench.nm",
    "csr": "sparseops.bench.csr",
    "attn": "sparseops.bench.attn",
    "kv": "sparseops.bench.kv",
    "model": "sparseops.bench.model",
}
