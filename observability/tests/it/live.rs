//! Against a real Elasticsearch, when `CHAT_TEST_ELASTICSEARCH_URL` names one (with
//! `CHAT_TEST_ELASTICSEARCH_USERNAME`/`_PASSWORD` or `_API_KEY` if it needs them): ship lines
//! into a fresh data stream, refresh, search them back, delete the stream.

use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::http::Url;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{IndicesDeleteDataStreamParts, IndicesRefreshParts};
use elasticsearch::{Elasticsearch, SearchParts};
use observability::{ElasticsearchSettings, LogFormat, Settings, layers_with_writer};
use serde_json::{Value, json};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{Capture, eventually};

#[tokio::test]
async fn lines_shipped_to_a_real_elasticsearch_can_be_searched() {
    let Ok(url) = std::env::var("CHAT_TEST_ELASTICSEARCH_URL") else {
        test_support::skip!("CHAT_TEST_ELASTICSEARCH_URL is not set: no live Elasticsearch");
        return;
    };
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let marker = format!("t{}", uuid_like());
    let mut es = ElasticsearchSettings::new(&url);
    es.username = var("CHAT_TEST_ELASTICSEARCH_USERNAME");
    es.password = var("CHAT_TEST_ELASTICSEARCH_PASSWORD");
    es.api_key = var("CHAT_TEST_ELASTICSEARCH_API_KEY");
    es.data_stream = format!("logs-chatdtest-{marker}");
    es.flush_interval = Duration::from_millis(50);
    let data_stream = es.data_stream.clone();

    let mut settings = Settings::new("chatd", "live-test");
    settings.format = LogFormat::Json;
    settings.elasticsearch = Some(es.clone());
    let (layer, telemetry) =
        layers_with_writer::<Registry, _>(settings, Capture::default()).unwrap();
    {
        let _default = tracing::subscriber::set_default(Registry::default().with(layer));
        let span = tracing::info_span!("request", request_id = "live-1", url.path = "/v1/rooms");
        let _e = span.enter();
        for i in 0..5 {
            tracing::info!(marker = %marker, seq = i, "live line {i}");
        }
        tracing::error!(error = %std::io::Error::other("boom"), marker = %marker, "live error");
    }
    eventually(Duration::from_secs(30), "6 lines shipped", || {
        telemetry.shipper_stats().unwrap().shipped == 6
    })
    .await;
    let stats = telemetry.shipper_stats().unwrap();
    telemetry.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.failed, 0, "{stats:?}");

    let client = client(&es);
    client
        .indices()
        .refresh(IndicesRefreshParts::Index(&[&data_stream]))
        .send()
        .await
        .unwrap()
        .error_for_status_code()
        .unwrap();
    let found: Value = client
        .search(SearchParts::Index(&[&data_stream]))
        .body(json!({"query": {"match": {"chat.marker": marker}}, "size": 20, "sort": [{"chat.seq": {"order": "asc", "unmapped_type": "long"}}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hits = found["hits"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 6, "{found}");
    let error = hits
        .iter()
        .map(|h| &h["_source"])
        .find(|s| s["log.level"] == "error")
        .unwrap();
    assert_eq!(error["error.message"], "boom");
    assert_eq!(error["service.name"], "chatd");
    assert_eq!(error["http.request.id"], "live-1");

    let _ = client
        .indices()
        .delete_data_stream(IndicesDeleteDataStreamParts::Name(&[&data_stream]))
        .send()
        .await;
}

fn client(es: &ElasticsearchSettings) -> Elasticsearch {
    let mut b = TransportBuilder::new(SingleNodeConnectionPool::new(Url::parse(&es.url).unwrap()));
    if let Some(k) = &es.api_key {
        b = b.auth(Credentials::EncodedApiKey(k.clone()));
    } else if let (Some(u), Some(p)) = (&es.username, &es.password) {
        b = b.auth(Credentials::Basic(u.clone(), p.clone()));
    }
    Elasticsearch::new(b.build().unwrap())
}

/// Lower-case, unique enough for a data stream name.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}
