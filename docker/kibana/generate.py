#!/usr/bin/env python3
"""Writes saved_objects.ndjson: the data view for chatd's logs and two dashboards.

Kibana's saved objects nest JSON documents inside JSON strings (visState, panelsJSON,
searchSourceJSON), which is miserable to edit by hand; edit this script instead and run it:

    python3 docker/kibana/generate.py            # rewrites saved_objects.ndjson
    python3 docker/kibana/generate.py --stdout   # prints it (the test compares the two)

The objects are aggregation-based visualizations and a saved search (the export format that
Kibana 8 imports and migrates without surprises). Every field they use is mapped in
docker/elasticsearch/logs-chatd.index-template.json; docker-tests/tests/docker.rs checks that, and
that every reference points at an object in the file. After changing a dashboard in Kibana,
export it (Stack Management > Saved objects > Export) and port the change back here.
"""

import json
import pathlib

OUT = pathlib.Path(__file__).with_name("saved_objects.ndjson")

DATA_VIEW_ID = "logs-chatd"
CORE_MIGRATION = "8.8.0"
INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"


def dumps(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def search_source(query):
    return dumps(
        {
            "query": {"query": query, "language": "kuery"},
            "filter": [],
            "indexRefName": INDEX_REF,
        }
    )


def data_view():
    return {
        "type": "index-pattern",
        "id": DATA_VIEW_ID,
        "attributes": {
            "title": "logs-chatd-*",
            "name": "chatd logs",
            "timeFieldName": "@timestamp",
            "allowHidden": False,
            "fields": "[]",
            "fieldAttrs": "{}",
            "runtimeFieldMap": "{}",
            "sourceFilters": "[]",
            # event.duration is in nanoseconds (ECS); show it in milliseconds.
            "fieldFormatMap": dumps(
                {
                    "event.duration": {
                        "id": "duration",
                        "params": {
                            "inputFormat": "nanoseconds",
                            "outputFormat": "asMilliseconds",
                            "outputPrecision": 1,
                        },
                    }
                }
            ),
        },
        "references": [],
        "managed": False,
        "coreMigrationVersion": CORE_MIGRATION,
        "typeMigrationVersion": "8.0.0",
    }


# ---- aggregations ---------------------------------------------------------------------------


def count(agg_id="1"):
    return {"id": agg_id, "enabled": True, "type": "count", "params": {}, "schema": "metric"}


def percentiles(agg_id, field, percents):
    return {
        "id": agg_id,
        "enabled": True,
        "type": "percentiles",
        "params": {"field": field, "percents": percents},
        "schema": "metric",
    }


def cardinality(agg_id, field, label):
    return {
        "id": agg_id,
        "enabled": True,
        "type": "cardinality",
        "params": {"field": field, "customLabel": label},
        "schema": "metric",
    }


def over_time(agg_id="2"):
    return {
        "id": agg_id,
        "enabled": True,
        "type": "date_histogram",
        "params": {
            "field": "@timestamp",
            "useNormalizedEsInterval": True,
            "scaleMetricValues": False,
            "interval": "auto",
            "drop_partials": False,
            "min_doc_count": 1,
            "extended_bounds": {},
        },
        "schema": "segment",
    }


def terms(agg_id, field, schema, size=10, label=None):
    params = {
        "field": field,
        "orderBy": "1",
        "order": "desc",
        "size": size,
        "otherBucket": False,
        "otherBucketLabel": "Other",
        "missingBucket": False,
        "missingBucketLabel": "Missing",
    }
    if label:
        params["customLabel"] = label
    return {"id": agg_id, "enabled": True, "type": "terms", "params": params, "schema": schema}


def status_classes(agg_id, schema):
    return {
        "id": agg_id,
        "enabled": True,
        "type": "range",
        "params": {
            "field": "http.response.status_code",
            "ranges": [
                {"from": 100, "to": 200, "label": "1xx"},
                {"from": 200, "to": 300, "label": "2xx"},
                {"from": 300, "to": 400, "label": "3xx"},
                {"from": 400, "to": 500, "label": "4xx"},
                {"from": 500, "to": 600, "label": "5xx"},
            ],
        },
        "schema": schema,
    }


# ---- visualization types --------------------------------------------------------------------


def xy_params(chart, mode, y_title):
    return {
        "type": chart,
        "grid": {"categoryLines": False},
        "categoryAxes": [
            {
                "id": "CategoryAxis-1",
                "type": "category",
                "position": "bottom",
                "show": True,
                "scale": {"type": "linear"},
                "labels": {"show": True, "filter": True, "truncate": 100},
                "title": {},
            }
        ],
        "valueAxes": [
            {
                "id": "ValueAxis-1",
                "name": "LeftAxis-1",
                "type": "value",
                "position": "left",
                "show": True,
                "scale": {"type": "linear", "mode": "normal"},
                "labels": {"show": True, "rotate": 0, "filter": False, "truncate": 100},
                "title": {"text": y_title},
            }
        ],
        "seriesParams": [
            {
                "show": True,
                "type": chart,
                "mode": mode,
                "data": {"label": y_title, "id": "1"},
                "valueAxis": "ValueAxis-1",
                "drawLinesBetweenPoints": True,
                "lineWidth": 2,
                "showCircles": True,
                "interpolate": "linear",
            }
        ],
        "addTooltip": True,
        "detailedTooltip": True,
        "addLegend": True,
        "legendPosition": "right",
        "times": [],
        "addTimeMarker": False,
        "labels": {"show": False},
        "thresholdLine": {"show": False, "value": 10, "width": 1, "style": "full", "color": "#E7664C"},
        "palette": {"type": "palette", "name": "default"},
    }


TABLE_PARAMS = {
    "perPage": 10,
    "showPartialRows": False,
    "showMetricsAtAllLevels": False,
    "showTotal": False,
    "totalFunc": "sum",
    "percentageCol": "",
    "showToolbar": False,
    "autoFitRowToContent": False,
}

PIE_PARAMS = {
    "type": "pie",
    "addTooltip": True,
    "legendDisplay": "show",
    "legendPosition": "right",
    "nestedLegend": False,
    "truncateLegend": True,
    "maxLegendLines": 1,
    "distinctColors": False,
    "isDonut": True,
    "emptySizeRatio": 0.3,
    "palette": {"type": "palette", "name": "default"},
    "labels": {
        "show": True,
        "last_level": False,
        "values": True,
        "valuesFormat": "percent",
        "percentDecimals": 1,
        "truncate": 100,
        "position": "default",
    },
}

METRIC_PARAMS = {
    "addTooltip": True,
    "addLegend": False,
    "type": "metric",
    "metric": {
        "percentageMode": False,
        "useRanges": False,
        "colorSchema": "Green to Red",
        "metricColorMode": "None",
        "colorsRange": [{"from": 0, "to": 10000}],
        "labels": {"show": True},
        "invertColors": False,
        "style": {"bgFill": "#000", "bgColor": False, "labelColor": False, "subText": "", "fontSize": 60},
    },
}


def visualization(vis_id, title, vis_type, params, aggs, query, description=""):
    return {
        "type": "visualization",
        "id": vis_id,
        "attributes": {
            "title": title,
            "description": description,
            "uiStateJSON": "{}",
            "version": 1,
            "visState": dumps({"title": title, "type": vis_type, "params": params, "aggs": aggs}),
            "kibanaSavedObjectMeta": {"searchSourceJSON": search_source(query)},
        },
        "references": [{"name": INDEX_REF, "type": "index-pattern", "id": DATA_VIEW_ID}],
        "managed": False,
        "coreMigrationVersion": CORE_MIGRATION,
        "typeMigrationVersion": "8.5.0",
    }


def saved_search(search_id, title, columns, query, description=""):
    return {
        "type": "search",
        "id": search_id,
        "attributes": {
            "title": title,
            "description": description,
            "columns": columns,
            "sort": [["@timestamp", "desc"]],
            "grid": {},
            "hideChart": False,
            "isTextBasedQuery": False,
            "timeRestore": False,
            "kibanaSavedObjectMeta": {"searchSourceJSON": search_source(query)},
        },
        "references": [{"name": INDEX_REF, "type": "index-pattern", "id": DATA_VIEW_ID}],
        "managed": False,
        "coreMigrationVersion": CORE_MIGRATION,
        "typeMigrationVersion": "8.0.0",
    }


def dashboard(dash_id, title, description, panels):
    """panels: (panel_id, saved object, x, y, w, h)"""
    panels_json = []
    references = []
    for panel_id, obj, x, y, w, h in panels:
        ref = f"panel_{panel_id}"
        panels_json.append(
            {
                "type": obj["type"],
                "gridData": {"x": x, "y": y, "w": w, "h": h, "i": panel_id},
                "panelIndex": panel_id,
                "embeddableConfig": {"enhancements": {}},
                "panelRefName": ref,
            }
        )
        references.append({"name": ref, "type": obj["type"], "id": obj["id"]})
    return {
        "type": "dashboard",
        "id": dash_id,
        "attributes": {
            "title": title,
            "description": description,
            "panelsJSON": dumps(panels_json),
            "optionsJSON": dumps(
                {
                    "useMargins": True,
                    "syncColors": False,
                    "syncCursor": True,
                    "syncTooltips": False,
                    "hidePanelTitles": False,
                }
            ),
            "timeRestore": True,
            "timeFrom": "now-1h",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 30000},
            "version": 1,
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": dumps({"query": {"query": "", "language": "kuery"}, "filter": []})
            },
        },
        "references": references,
        "managed": False,
        "coreMigrationVersion": CORE_MIGRATION,
        "typeMigrationVersion": "8.9.0",
    }


# ---- the objects ----------------------------------------------------------------------------

ERRORS_AND_WARNINGS = 'log.level : ("ERROR" or "WARN")'
ERRORS = 'log.level : "ERROR"'
REQUESTS = "http.response.status_code : *"

errors_over_time = visualization(
    "chatd-errors-over-time",
    "chatd: errors and warnings over time",
    "histogram",
    xy_params("histogram", "stacked", "Log lines"),
    [count(), over_time(), terms("3", "log.level", "group", size=5)],
    ERRORS_AND_WARNINGS,
)
errors_by_node = visualization(
    "chatd-errors-by-node",
    "chatd: errors by node",
    "pie",
    PIE_PARAMS,
    [count(), terms("2", "service.node.name", "segment")],
    ERRORS,
)
errors_by_type = visualization(
    "chatd-errors-by-type",
    "chatd: top error types",
    "table",
    TABLE_PARAMS,
    [count(), terms("2", "error.type", "bucket", size=20, label="error.type")],
    ERRORS,
)
errors_by_logger = visualization(
    "chatd-errors-by-logger",
    "chatd: errors and warnings by module",
    "table",
    TABLE_PARAMS,
    [
        count(),
        terms("2", "log.logger", "bucket", size=20, label="module (log.logger)"),
        terms("3", "log.level", "bucket", size=5, label="level"),
    ],
    ERRORS_AND_WARNINGS,
)
server_errors_by_path = visualization(
    "chatd-5xx-by-path",
    "chatd: 5xx responses by path",
    "table",
    TABLE_PARAMS,
    [
        count(),
        terms("2", "url.path", "bucket", size=20, label="path"),
        terms("3", "http.response.status_code", "bucket", size=5, label="status"),
    ],
    "http.response.status_code >= 500",
)
error_log = saved_search(
    "chatd-error-log",
    "chatd: error log",
    [
        "service.node.name",
        "log.level",
        "log.logger",
        "message",
        "error.type",
        "error.message",
        "trace.id",
    ],
    ERRORS_AND_WARNINGS,
    "Every ERROR and WARN line; trace.id finds the request's trace in Jaeger.",
)

requests_over_time = visualization(
    "chatd-requests-over-time",
    "chatd: requests per node",
    "histogram",
    xy_params("histogram", "stacked", "Requests"),
    [count(), over_time(), terms("3", "service.node.name", "group", size=10)],
    REQUESTS,
)
status_over_time = visualization(
    "chatd-status-over-time",
    "chatd: responses by status class",
    "histogram",
    xy_params("histogram", "stacked", "Responses"),
    [count(), over_time(), status_classes("3", "group")],
    REQUESTS,
)
latency_over_time = visualization(
    "chatd-latency-over-time",
    "chatd: request duration (p50, p95, p99)",
    "line",
    xy_params("line", "normal", "Duration"),
    [percentiles("1", "event.duration", [50, 95, 99]), over_time()],
    REQUESTS,
)
top_paths = visualization(
    "chatd-top-paths",
    "chatd: busiest paths",
    "table",
    TABLE_PARAMS,
    [
        count(),
        terms("2", "url.path", "bucket", size=20, label="path"),
        percentiles("3", "event.duration", [50, 99]),
    ],
    REQUESTS,
)
methods = visualization(
    "chatd-requests-by-method",
    "chatd: requests by method",
    "pie",
    PIE_PARAMS,
    [count(), terms("2", "http.request.method", "segment")],
    REQUESTS,
)
active_users = visualization(
    "chatd-active-users",
    "chatd: active users",
    "metric",
    METRIC_PARAMS,
    [cardinality("1", "user.id", "distinct users")],
    REQUESTS,
)

errors_dashboard = dashboard(
    "chatd-errors",
    "chatd: errors",
    "ERROR and WARN log lines of every chatd node, and the requests that failed with 5xx.",
    [
        ("e1", errors_over_time, 0, 0, 32, 14),
        ("e2", errors_by_node, 32, 0, 16, 14),
        ("e3", errors_by_type, 0, 14, 16, 15),
        ("e4", errors_by_logger, 16, 14, 16, 15),
        ("e5", server_errors_by_path, 32, 14, 16, 15),
        ("e6", error_log, 0, 29, 48, 20),
    ],
)
traffic_dashboard = dashboard(
    "chatd-traffic",
    "chatd: traffic",
    "HTTP requests served by every chatd node, from their request log lines.",
    [
        ("t1", requests_over_time, 0, 0, 32, 14),
        ("t2", active_users, 32, 0, 16, 14),
        ("t3", status_over_time, 0, 14, 24, 14),
        ("t4", latency_over_time, 24, 14, 24, 14),
        ("t5", top_paths, 0, 28, 32, 16),
        ("t6", methods, 32, 28, 16, 16),
    ],
)

OBJECTS = [
    data_view(),
    errors_over_time,
    errors_by_node,
    errors_by_type,
    errors_by_logger,
    server_errors_by_path,
    error_log,
    requests_over_time,
    status_over_time,
    latency_over_time,
    top_paths,
    methods,
    active_users,
    errors_dashboard,
    traffic_dashboard,
]

if __name__ == "__main__":
    import sys

    text = "".join(dumps(obj) + "\n" for obj in OBJECTS)
    if "--stdout" in sys.argv[1:]:
        sys.stdout.write(text)
    else:
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {len(OBJECTS)} objects to {OUT}")
