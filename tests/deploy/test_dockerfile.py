"""deploy/Dockerfile, read statically (it needs the official Rust image, which cannot be
pulled here; build-local.sh builds its runtime stage and test_image.py runs that)."""

import re

from .deployutil import REPO

DOCKERFILE = (REPO / "deploy/Dockerfile").read_text()
MARKER = "# ---- everything below is shared with deploy/image/build-local.sh ----"


def instructions(text):
    return [line for line in text.splitlines() if re.match(r"^[A-Z]+\b", line)]


def test_two_stages_official_rust_to_scratch():
    froms = [line for line in instructions(DOCKERFILE) if line.startswith("FROM")]
    assert froms == ["FROM ${RUST_IMAGE} AS build", "FROM scratch AS runtime"]
    assert "ARG RUST_IMAGE=rust:1.95-bookworm" in DOCKERFILE
    assert "cargo build --release --locked -p ferromq" in DOCKERFILE
    assert "deploy/image/make-rootfs.sh target/release/ferromq /rootfs" in DOCKERFILE
    # No `# syntax=` line: it would make BuildKit pull a frontend image.
    assert not DOCKERFILE.startswith("# syntax")


def test_runtime_stage_is_what_build_local_copies():
    assert DOCKERFILE.count(MARKER) == 1
    shared = instructions(DOCKERFILE.split(MARKER, 1)[1])
    kinds = [line.split()[0] for line in shared]
    assert kinds == ["ENV", "WORKDIR", "VOLUME", "EXPOSE", "USER", "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT"]
    assert "USER 10001:10001" in shared
    assert "EXPOSE 1883 8883 8080 8083 7946" in shared
    assert 'ENTRYPOINT ["/usr/local/bin/ferromq"]' in shared
    # Nothing before the marker in the runtime stage but the rootfs copy.
    runtime = DOCKERFILE.split("\nFROM scratch AS runtime\n", 1)[1].split(MARKER, 1)[0]
    assert instructions(runtime) == ["COPY --from=build /rootfs/ /"]
