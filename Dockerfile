# The gptsql CLI for the Docker demo (docker-compose.yml), installed from this repository the way
# the README installs it: pip install . (the README's -e only makes it editable). The database is
# the compose file's db service (pgvector/pgvector), reached through GPTSQL_DSN.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gptsql/ gptsql/
COPY cli/ cli/
COPY server/ server/
COPY loader/ loader/
COPY driver/ driver/
COPY service/ service/
COPY reference/ reference/
COPY benchmarks/ benchmarks/
COPY plots/ plots/
COPY sql/ sql/
COPY web/ web/
RUN pip install . && gptsql --version

# Not root. The Hugging Face cache is a named volume; a new one takes this directory's owner.
RUN useradd --create-home --uid 1000 gptsql && mkdir -p "$HF_HOME" && chown -R gptsql "$HF_HOME"
USER gptsql
WORKDIR /home/gptsql

CMD ["gptsql", "--help"]
