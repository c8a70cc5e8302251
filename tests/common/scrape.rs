//! The metrics endpoint as a client sees it: GET over HTTP/1.1, the exposition format parsed
//! rather than string-matched.
use std::net::SocketAddr;

use prometheus_parse::{Sample, Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of `GET path` over HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bertd\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

pub struct Metrics(Vec<Sample>);

impl Metrics {
    pub async fn scrape(addr: SocketAddr) -> Metrics {
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        Metrics(scrape.samples)
    }

    /// The value of the one sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        match matching.as_slice() {
            [one] => match &one.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name}: not a number: {other:?}"),
            },
            [] => 0.0,
            many => panic!("{name} {labels:?}: {} samples", many.len()),
        }
    }

    /// Sum over every sample named `name` whose labels include `labels`.
    pub fn total(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name}: not a number: {other:?}"),
            })
            .sum()
    }

    /// The number of observations in a histogram, from its buckets (the +Inf one).
    pub fn observations(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let histograms: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        histograms
            .iter()
            .map(|s| match &s.value {
                Value::Histogram(buckets) => {
                    buckets
                        .iter()
                        .find(|b| b.less_than.is_infinite())
                        .expect("a +Inf bucket")
                        .count
                }
                other => panic!("{name}: not a histogram: {other:?}"),
            })
            .sum()
    }
}
