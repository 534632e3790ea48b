#!/usr/bin/env bash
# One-shot import of chatd's Kibana objects (the kibana-setup service of ../compose.ops.yaml;
# it runs in the Kibana image, which has bash and curl): the data view logs-chatd-* (made the
# default one), the "chatd: errors" and "chatd: traffic" dashboards and what they show.
# Idempotent (overwrite=true): safe to run again after editing saved_objects.ndjson:
#   docker compose -f docker/compose.yaml -f docker/compose.ops.yaml run --rm kibana-setup
set -euo pipefail

KIBANA_URL="${KIBANA_URL:-http://kibana:5601}"
DIR="$(cd "$(dirname "$0")" && pwd)"

echo "waiting for ${KIBANA_URL}"
until curl -fsS "${KIBANA_URL}/api/status" 2>/dev/null | grep -q '"level":"available"'; do
  sleep 5
done

echo "importing saved objects"
curl -sS -X POST "${KIBANA_URL}/api/saved_objects/_import?overwrite=true" \
  -H 'kbn-xsrf: true' \
  --form "file=@${DIR}/saved_objects.ndjson" >/tmp/import.json
cat /tmp/import.json
echo
# {"success":true,"successCount":N,...} or {"success":false,"errors":[...]}
if ! grep -q '"success":true' /tmp/import.json; then
  echo "the import failed (see the errors above)" >&2
  exit 1
fi

echo "default data view: logs-chatd"
curl -fsS -X POST "${KIBANA_URL}/api/data_views/default" \
  -H 'kbn-xsrf: true' -H 'content-type: application/json' \
  -d '{"data_view_id":"logs-chatd","force":true}'
echo
echo "done: ${KIBANA_PUBLIC_URL:-http://localhost:5601}/app/dashboards"
