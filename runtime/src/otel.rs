//! OpenTelemetry trace context across brokers (feature `otel`). Being written.
