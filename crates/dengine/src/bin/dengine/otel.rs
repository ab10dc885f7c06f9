//! Distributed tracing for `dengine serve`: etcd's flags
//! (`--enable-distributed-tracing` and the `--distributed-tracing-*`
//! settings, also under their `--experimental-` names of etcd 3.5), spans
//! exported over OTLP/gRPC to a collector, sampled as etcd samples them
//! (per million calls started here; a call that carries a sampled trace
//! context is always traced).

/// The tracing settings of the merged arguments.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub struct TracingSettings {
    /// The collector, `host:port` or an `http(s)://` URL.
    pub address: String,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// The `service.instance.id` of the spans.
    pub instance_id: String,
    /// Traces started here per million calls.
    pub sampling_per_million: u32,
}

/// etcd's default collector address.
pub const DEFAULT_ADDRESS: &str = "localhost:4317";

/// The layer of the process' subscriber that turns spans into traces.
pub type TraceLayer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// What flushes the spans at the end.
#[cfg(feature = "otel")]
pub struct Tracing {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

#[cfg(feature = "otel")]
impl Tracing {
    /// Sends the spans still buffered (at the end of the process).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the last spans failed");
        }
    }
}

/// Without the `otel` feature there is nothing to flush.
#[cfg(not(feature = "otel"))]
pub struct Tracing;

#[cfg(not(feature = "otel"))]
impl Tracing {
    /// Nothing to flush.
    pub fn shutdown(&self) {}
}

/// The exporter and layer for `settings`; must run inside the tokio
/// runtime (the exporter's connection lives there).
#[cfg(feature = "otel")]
pub fn start(settings: &TracingSettings) -> Result<(TraceLayer, Tracing), String> {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing_subscriber::Layer;

    let endpoint = if settings.address.contains("://") {
        settings.address.clone()
    } else {
        format!("http://{}", settings.address)
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("--distributed-tracing-address {:?}: {e}", settings.address))?;
    let ratio = f64::from(settings.sampling_per_million) / 1_000_000.0;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .with_attribute(KeyValue::new(
                    "service.instance.id",
                    settings.instance_id.clone(),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer("dengine");
    // Only dengine's own spans and events: not the libraries' below it.
    let only_dengine =
        tracing_subscriber::filter::Targets::new().with_target("dengine", tracing::Level::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(only_dengine)
        .boxed();
    Ok((layer, Tracing { provider }))
}

/// Without the `otel` feature, tracing cannot be turned on.
#[cfg(not(feature = "otel"))]
pub fn start(_: &TracingSettings) -> Result<(TraceLayer, Tracing), String> {
    Err(
        "--enable-distributed-tracing: this build has no tracing (build with the `otel` feature)"
            .into(),
    )
}
