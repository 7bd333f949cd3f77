"""The click commands: thin layers over gptsql.server, gptsql.driver and the views of sql/09_runs.sql."""
