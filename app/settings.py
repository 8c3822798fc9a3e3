"""Service configuration: one class, read from `DIGITS_*` environment variables."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.runtimes import Runtime
from app.versions import VersionPolicy, parse_policies
from digit_contract import Style


class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Settings(BaseSettings):
    # An empty variable (`DIGITS_HOST=` in an env file, `${VAR:-}` in compose) means the
    # default: read as a value it made the host '' (every interface), the model and key
    # file paths '.' (the working directory), and numbers and switches fail to parse.
    model_config = SettingsConfigDict(env_prefix="DIGITS_", protected_namespaces=(),
                                      env_ignore_empty=True)

    model_dir: Path = Field(Path("models"), description="Where models/<style>/<version>/ live.")
    device: DeviceChoice = Field(
        DeviceChoice.auto, description="auto: first GPU if any, else CPU; gpu: fail without one.")
    model_poll_seconds: float = Field(
        5.0, ge=0, description="How often the model directory is read for new, removed or "
        "relabelled versions, which go live without a restart; 0: read once at start-up.")
    model_versions: str = Field(
        "", description="Versions served per style: `latest` (the default), `latest:N`, "
        "`all` or a list, e.g. `sequential=1,2;functional=latest:2`. Labelled versions "
        "(models/<style>/labels.json) are served too.")
    # Subclassed reads real handwriting best (README, Real handwriting).
    default_model: Style = Field(Style.subclassed, description="Style used by POST /predict.")
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest request body.")
    max_images_per_request: int = Field(256, gt=0)
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest width x height decoded (decompression bombs).")
    max_decode_megabytes: int = Field(
        96, gt=0, description="Largest memory one image may need to decode, estimated from its "
        "header before decoding (a 5000x4000 RGB PNG needs 95 MB; a baseline JPEG far less).")
    max_request_pixels: int = Field(
        100_000_000, gt=0, description="Most pixels all the images of one request may add up to.")
    decode_timeout_ms: int = Field(
        1000, gt=0, description="Most CPU time a decoder process may spend on one image "
        "(and ten times that in wall time).")
    decode_request_timeout_ms: int = Field(
        1000, gt=0, description="Most CPU time the decoder processes may spend on all the "
        "images of one request, or what its images are allowed by their size if that is more "
        "(30 ms each and 0.3 µs per pixel).")
    decoder_memory_megabytes: int = Field(
        512, gt=0, description="Address space a decoder process may add to its own (RLIMIT_AS).")
    max_batch_size: int = Field(128, gt=0, description="Most images in one model call.")
    batch_timeout_ms: float = Field(
        2.0, ge=0, description="Longest wait for more requests before a model call. It only "
        "waits while fewer are queued than were in the service during the last batch, so a "
        "lone client never waits; 0 never waits.")
    max_queue_images: int = Field(4096, gt=0,
                                  description="Images waiting per model before 503 + Retry-After.")
    preprocess_workers: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1), ge=0,
        description="Sandboxed processes decoding every image but small plain PNGs; 0 decodes "
        "everything in the server process, without memory or time limits (not for production).")
    compiled_preprocessing: bool = Field(
        True, description="Normalise digits in the server processes with compiled loops "
        "(app/kernels.py: the same digits for less CPU; numba adds about 130 MB to each "
        "process); false: numpy only.")
    runtime: Runtime = Field(
        Runtime.auto, description="auto: LiteRT on CPU for versions with model.tflite, "
        "TensorFlow otherwise (GPU); litert or tensorflow to force one.")
    cpu_threads: int = Field(0, ge=0, description="CPU threads per server process for the "
                             "models; 0: this machine's cores divided by the server processes.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Longest a request's line and headers may take to arrive "
        "(408), and a new connection to send its first byte (closed).")
    body_timeout_s: float = Field(
        60.0, gt=0, description="Longest a request body may take to arrive (408); also how "
        "long the rest of a body answered early may drain before the connection closes.")
    max_header_bytes: int = Field(
        32 * 1024, gt=0, description="Largest request line and headers, together (431).")
    send_timeout_s: float = Field(
        60.0, gt=0, description="Longest a client may leave its answer unread (its connection "
        "is then dropped).")
    max_buffered_body_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Request-body bytes all connections of a server "
        "process may hold while they arrive; past it a connection adding more gets 503.")
    max_connections: int = Field(
        1000, gt=0, description="Open connections per server process, HTTP and gRPC each; "
        "past it a new HTTP connection gets 503 and is closed, a new gRPC one is closed.")
    graceful_shutdown_s: float = Field(
        30.0, gt=0, description="On SIGTERM, how long requests in flight may take to finish; "
        "those still running then get 503 + Retry-After.")
    api_keys: str = Field(
        "", description="Comma-separated API keys; when any key is set (here or in "
        "DIGITS_API_KEYS_FILE), every route but the probes and the page needs one (401).")
    api_keys_file: Path | None = Field(
        None, description="A file of SHA-256 hex digests of API keys, one per line "
        "(`printf %s KEY | sha256sum`); keeps the keys themselves out of the environment.")
    grpc_port: int | None = Field(
        None, gt=0, lt=65536, description="Serve Open Inference Protocol v2 over gRPC on this "
        "port (Triton and KServe clients; 8001 by convention); unset: no gRPC.")
    metrics_port: int | None = Field(
        None, gt=0, description="Serve /metrics on this port only (what Prometheus scrapes, "
        "kept off the public port); unset: /metrics on the main port, behind the key if any.")
    docs: bool = Field(True, description="Serve /docs, /redoc and /openapi.json.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    access_log: bool = Field(True, description="One JSON log line per request.")
    host: str = Field("127.0.0.1", description="Bind address for `python -m app`.")
    port: int = Field(8000, description="Port for `python -m app`.")
    workers: int = Field(1, ge=1, description="Server processes for `python -m app`, each "
                         "with its own copy of the models and its own batches.")
    pin_processes: bool = Field(
        True, description="With exactly one server process per usable CPU, pin each to its "
        "own CPU, with its threads and decoders (fewer cross-core wake-ups); otherwise "
        "nothing is pinned.")

    @field_validator("model_versions")
    @classmethod
    def _valid_policies(cls, value: str) -> str:
        parse_policies(value)  # its ValueError names what is wrong
        return value

    def version_policies(self) -> dict[Style, VersionPolicy]:
        return parse_policies(self.model_versions)

    def model_threads(self) -> int:
        """`cpu_threads`, or this process's share of the cores it may run on."""
        if self.cpu_threads:
            return self.cpu_threads
        return max(1, len(os.sched_getaffinity(0)) // self.workers)
