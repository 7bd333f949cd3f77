"""python -m gptsql: the same as the gptsql command."""
from gptsql.cli.main import cli

cli()
