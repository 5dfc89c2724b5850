FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY taskd taskd
COPY bridge bridge
COPY tasks tasks
COPY schemas schemas
RUN pip install --no-cache-dir . && useradd --create-home taskd
USER taskd
ENV TASKD_DATA_ROOT=/data TASKD_REDIS_URL=redis://redis:6379/0
