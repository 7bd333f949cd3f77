"""gptsql — GPT-2 running inside PostgreSQL.

The model's math is SQL (gptsql.sql). The Python parts each have a room of their own:
gptsql.cli (the commands), gptsql.server (the embedded PostgreSQL and connections),
gptsql.loader (checkpoints into tables), gptsql.driver (the token-by-token loop), gptsql.service
(what the CLI and the explorer share), gptsql.web (the explorer),
gptsql.reference (the numpy GPT-2 that checks the SQL), gptsql.benchmarks, gptsql.plots.
"""
