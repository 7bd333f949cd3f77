"""A numpy GPT-2 (the reference the SQL engine is checked against) and the check itself."""
