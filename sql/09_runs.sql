-- 09_runs.sql — views for exploring models and runs from psql.

CREATE OR REPLACE VIEW gptsql.model_size AS
SELECT  m.name, m.source, m.n_layer, m.n_embd, m.n_head, m.n_ctx, m.n_vocab, m.n_params,
        (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.wte x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.wpe x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.norm x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.linear x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.token x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.merge x WHERE x.model_id = m.id)
        AS bytes,
        m.loaded_at
FROM    gptsql.model m;
COMMENT ON VIEW gptsql.model_size IS 'Loaded models with their shapes, parameter count and bytes of their rows.';
