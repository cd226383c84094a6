# The entitled processes (ingest, worker, relay, hydrate, api, migrate) for docker-compose.yml:
#   docker build -t entitled .   then   docker run --rm entitled --help
FROM python:3.11.14-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY entitled ./entitled
COPY ingest ./ingest
COPY processors ./processors
COPY projections ./projections
COPY api ./api
COPY launcher ./launcher
# Every dependency at the version of requirements.lock (the runtime subset of it).
RUN pip install -c requirements.lock . \
    && useradd --system --create-home --home-dir /var/lib/entitled entitled

# Not root; the working directory is writable because the Faust worker keeps its
# data directory there.
USER entitled
WORKDIR /var/lib/entitled
ENV ENTITLED_HOME=/var/lib/entitled

ENTRYPOINT ["entitled"]
CMD ["--help"]
