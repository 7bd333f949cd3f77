"""Where the model lives: the embedded PostgreSQL server, or any server given by DSN."""
