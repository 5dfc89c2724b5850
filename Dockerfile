# One image for every taskd process: `taskd bridge`, `taskd worker`, `taskd flower`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY taskd taskd
COPY bridge bridge
COPY taskcli taskcli
COPY tasks tasks
COPY schemas schemas

# The data root exists in the image, owned by taskd, so a fresh named volume mounted there
# starts out writable by the processes (the UI must write there too: give it the same uid or
# a shared group).
RUN pip install --no-cache-dir . \
 && useradd --create-home --uid 1000 taskd \
 && mkdir -p /usr/local/mozart/data \
 && chown taskd:taskd /usr/local/mozart/data

USER taskd
ENV TASKD_DATA_ROOT=/usr/local/mozart/data \
    TASKD_REDIS_URL=redis://redis:6379/0
VOLUME ["/usr/local/mozart/data"]

# SIGTERM: the bridge stops after its current tick; a worker does a warm shutdown.
STOPSIGNAL SIGTERM
CMD ["taskd", "--help"]
