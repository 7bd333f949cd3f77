"""What the CLI and the explorer both do, over a connection: plain functions and one class, no
click and no web. Each raises gptsql.errors.UserError with a one-line message that names no CLI
flag; the CLI (gptsql.cli) and the web app (gptsql.web) word it for their users where they must.

  session   a Database and the connection a user's work runs on (reconnected after a restart)
  options   the rules of every option: sampling, counts, blocks, heads, places
  models    model lookup, the default model, memory and disk before a load or a generation
  runs      run lookup ('latest' or an id), whether it recorded its activations, its steps
  text      token text for people (<e4 bd> for part of a character), prompts, database errors
"""
