//! analytics-service: aggregates over patient events. This first slice serves only its health
//! endpoint; the Kafka consumer and the aggregates arrive with the events issue.
