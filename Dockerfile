# gliaflow container: the embedded default engine (ANTsPy) and everything it needs, offline.
#
# FSL (the optional second engine) is not part of the image: its licence is non-commercial. A site
# that holds an FSL licence can build with `--build-arg WITH_FSL=1`, which runs FSL's official
# installer (network needed at build time only) into /opt/fsl; or bind-mount its own FSL and set
# FSLDIR at run time (`-v /usr/local/fsl:/opt/fsl:ro`).
FROM python:3.11-slim-bookworm
ARG WITH_FSL=0
ARG FSL_INSTALLER_URL=https://fsl.fmrib.ox.ac.uk/fsldownloads/fslconda/releases/fslinstaller.py

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg

RUN apt-get update \
    && apt-get install -y --no-install-recommends git procps dc \
    && rm -rf /var/lib/apt/lists/*

# opt-in FSL (official installer; you accept FSL's licence by building with WITH_FSL=1)
RUN if [ "$WITH_FSL" = 1 ]; then \
        apt-get update && apt-get install -y --no-install-recommends curl bzip2 ca-certificates \
        && curl -fsSL "$FSL_INSTALLER_URL" -o /tmp/fslinstaller.py \
        && python /tmp/fslinstaller.py --dest /opt/fsl --skip_registration \
        && rm -rf /tmp/fslinstaller.py /var/lib/apt/lists/*; \
    fi
ENV FSLDIR=/opt/fsl FSLOUTPUTTYPE=NIFTI_GZ

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
