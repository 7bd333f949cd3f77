"""The token-by-token loop that calls the SQL engine one statement per token."""
