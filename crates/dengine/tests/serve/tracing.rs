//! `--enable-distributed-tracing`: a real member exports its spans over
//! OTLP/gRPC to a collector (a small one here, on tonic, speaking the
//! OpenTelemetry collector's `TraceService`), with the service name and
//! instance id it was given, and flushes the last ones when it stops.

#![cfg(feature = "otel")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::harness::{Cluster, client, free_port, wait_leader};

/// A collector that keeps what it is sent.
#[derive(Clone, Default)]
struct Collector {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A string attribute of a resource or span.
fn string_attr(
    attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_exports_its_spans_to_an_otlp_collector() {
    let collector = Collector::default();
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut c = Cluster::new(1);
    c.extra.extend(
        [
            "--enable-distributed-tracing",
            "--distributed-tracing-address",
            &format!("127.0.0.1:{port}"),
            "--distributed-tracing-service-name",
            "dengine-test",
            // Every call starts a trace (the default, 0, traces only calls
            // that carry a sampled trace context).
            "--distributed-tracing-sampling-rate",
            "1000000",
        ]
        .map(String::from),
    );
    c.start_all();
    wait_leader(&c, 0, Duration::from_secs(20)).await;
    let mut kv = client(&c, 0).await;
    kv.put("traced", "v", None).await.expect("put");
    drop(kv);
    // Stopping flushes what the batch exporter still holds.
    assert!(c.terminate(0, Duration::from_secs(15)).success());

    let deadline = Instant::now() + Duration::from_secs(10);
    let (service, instance, names) = loop {
        let got = collector
            .got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut names = std::collections::BTreeSet::new();
        let mut service = None;
        let mut instance = None;
        for req in &got {
            for rs in &req.resource_spans {
                if let Some(r) = &rs.resource {
                    service = service.or(string_attr(&r.attributes, "service.name"));
                    instance = instance.or(string_attr(&r.attributes, "service.instance.id"));
                }
                for ss in &rs.scope_spans {
                    names.extend(ss.spans.iter().map(|s| s.name.clone()));
                }
            }
        }
        if names.contains("raft.apply") || Instant::now() > deadline {
            break (service, instance, names);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    serving.abort();
    assert_eq!(service.as_deref(), Some("dengine-test"));
    assert_eq!(instance.as_deref(), Some("m0"));
    for name in [
        "/etcdserverpb.KV/Put",
        "raft.replicate",
        "raft.fsync",
        "raft.apply",
    ] {
        assert!(names.contains(name), "no {name} span among {names:?}");
    }
}
