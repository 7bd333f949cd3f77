"""Run the benchmark as a script: python benchmarks/bench.py [--json out.json] (same as `gptsql bench`)."""
import sys

from gptsql.cli.main import cli

if __name__ == "__main__":
    cli(["bench", *sys.argv[1:]])
