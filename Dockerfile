# gliaflow container: the embedded default engine (ANTsPy) and everything it needs, offline.
# FSL is not included yet (a later issue adds it through Nipype).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg

RUN apt-get update \
    && apt-get install -y --no-install-recommends git procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/gliaflow
COPY pyproject.toml setup.py README.md ./
COPY pipeline ./pipeline
COPY workflows ./workflows
COPY infrastructure ./infrastructure
RUN pip install . && gliaflow --version

RUN useradd --create-home --uid 1000 gliaflow
USER gliaflow
WORKDIR /home/gliaflow
ENTRYPOINT ["gliaflow"]
CMD ["--help"]
