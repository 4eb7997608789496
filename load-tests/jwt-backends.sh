#!/usr/bin/env bash
# RS256 verification cost of jsonwebtoken's rust_crypto vs aws_lc_rs backends, same run
# (load-tests/jwt-backends/: its own small crate, so the gateway's build is not involved).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
openssl genrsa -out "$TMP/key.pem" 2048 2>/dev/null
openssl rsa -in "$TMP/key.pem" -pubout -out "$TMP/pub.pem" 2>/dev/null
cd "$HERE/jwt-backends"
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/../target/jwt-backends} cargo run --release --quiet -- "$TMP/key.pem" "$TMP/pub.pem"
