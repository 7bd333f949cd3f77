"""The explorer: `gptsql serve`, a local web app over the same database (see web/app.py)."""
