#!/usr/bin/env bash
# Regenerates src/gen/ from proto/ with buf + protoc-gen-es (both from npm).
# Run from anywhere; the generated code is committed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export PATH="$root/node_modules/.bin:$PATH"
cd "$here"
rm -rf src/gen
buf generate
echo "generated: $(find src/gen -name '*.ts' | sort | tr '\n' ' ')"
