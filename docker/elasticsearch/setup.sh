#!/usr/bin/env bash
# One-shot set-up of Elasticsearch for chatd's logs (the es-setup service of
# ../compose.ops.yaml; it runs in the Elasticsearch image, which has bash and curl):
#   1. the index template for logs-chatd-* (ECS field types, 14-day retention);
#   2. the data stream logs-chatd-default, so that it exists with that template before the
#      first log line arrives from chatd's shipper or from Logstash.
# Idempotent: safe to run again (docker compose ... run --rm es-setup).
set -euo pipefail

ES_URL="${ES_URL:-http://elasticsearch:9200}"
DIR="$(cd "$(dirname "$0")" && pwd)"

echo "waiting for ${ES_URL}"
until curl -fsS "${ES_URL}/_cluster/health?wait_for_status=yellow&timeout=10s" >/dev/null; do
  sleep 3
done

echo "index template logs-chatd"
curl -fsS -X PUT "${ES_URL}/_index_template/logs-chatd" \
  -H 'content-type: application/json' \
  --data-binary "@${DIR}/logs-chatd.index-template.json"
echo

echo "data stream logs-chatd-default"
status=$(curl -sS -o /tmp/data-stream.json -w '%{http_code}' -X PUT "${ES_URL}/_data_stream/logs-chatd-default")
case "${status}" in
  200) cat /tmp/data-stream.json; echo ;;
  400)
    if grep -q resource_already_exists_exception /tmp/data-stream.json; then
      echo "already exists"
    else
      cat /tmp/data-stream.json >&2
      exit 1
    fi
    ;;
  *)
    echo "PUT _data_stream/logs-chatd-default answered ${status}:" >&2
    cat /tmp/data-stream.json >&2
    exit 1
    ;;
esac
echo "done"
