{{/* Names and labels. */}}
{{- define "pp.name" -}}{{ .Release.Name }}{{- end }}

{{- define "pp.labels" -}}
app.kubernetes.io/part-of: patient-platform
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "pp.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/name: {{ .name }}
{{- end }}

{{- define "pp.image" -}}
{{- $r := .root.Values.image -}}
{{- if $r.registry }}{{ $r.registry }}/{{ end }}{{ $r.repository }}/{{ .name }}:{{ $r.tag }}
{{- end }}

{{- define "pp.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-credentials" .Release.Name) -}}
{{- end }}

{{/* Where the infrastructure is: external when configured, else the bundled one. */}}
{{- define "pp.pgHost" -}}{{ .Values.postgres.external.host | default (printf "%s-postgres" .Release.Name) }}{{- end }}
{{- define "pp.kafka" -}}{{ .Values.kafka.external.bootstrapServers | default (printf "%s-kafka:9092" .Release.Name) }}{{- end }}
{{- define "pp.discovery" -}}{{ .Values.keycloak.discoveryUrl | default (printf "http://%s-keycloak:8080/realms/patient-management" .Release.Name) }}{{- end }}
{{- define "pp.smtpHost" -}}{{ .Values.smtp.host | default (printf "%s-mailpit" .Release.Name) }}{{- end }}

{{/*
The platform's services: port (HTTP: health, readiness, metrics), extra ports, database, whether
it consumes Kafka (its replicas are then bounded by the partitions), who may call it, its env.
*/}}
{{- define "pp.services" -}}
gateway:
  port: 4004
  callers: [any]
  env:
    PATIENT_SERVICE_URL: "http://{{ .Release.Name }}-patient-service:4000"
    ANALYTICS_SERVICE_URL: "http://{{ .Release.Name }}-analytics-service:4002"
    APPOINTMENT_SERVICE_URL: "http://{{ .Release.Name }}-appointment-service:4003"
    RATE_LIMITS: {{ .Values.gateway.rateLimits | quote }}
    TRUSTED_PROXIES: {{ .Values.gateway.trustedProxies | quote }}
patient-service:
  port: 4000
  database: patient_service
  callers: [gateway]
  client: true
  env:
    BILLING_GRPC_URL: "http://{{ .Release.Name }}-billing-service:9001"
billing-service:
  port: 4001
  grpcPort: 9001
  database: billing_service
  consumer: true
  callers: [patient-service]
  env:
    GRPC_ADDR: "0.0.0.0:9001"
analytics-service:
  port: 4002
  database: analytics_service
  consumer: true
  callers: [gateway]
  env:
    ANALYTICS_TIME_ZONE: {{ .Values.timeZone | quote }}
appointment-service:
  port: 4003
  database: appointment_service
  consumer: true
  callers: [gateway]
  env:
    SCHEDULE_TIME_ZONE: {{ .Values.timeZone | quote }}
notification-service:
  port: 4005
  database: notification_service
  consumer: true
  callers: []
  env:
    MAIL_TIME_ZONE: {{ .Values.timeZone | quote }}
    SMTP_HOST: {{ include "pp.smtpHost" . | quote }}
    SMTP_PORT: {{ .Values.smtp.port | quote }}
    SMTP_STARTTLS: {{ .Values.smtp.starttls | quote }}
    MAIL_FROM: {{ .Values.smtp.mailFrom | quote }}
    {{- with .Values.smtp.username }}
    SMTP_USERNAME: {{ . | quote }}
    {{- end }}
{{- end }}
