{{- define "edgedesk.name" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "edgedesk.labels" -}}
app.kubernetes.io/name: edgedesk
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: cloud-controller
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "edgedesk.selector" -}}
app.kubernetes.io/name: edgedesk
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgedesk.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "edgedesk.name" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/*
The host branches reach the broker at: mqtt.advertiseHost, else the external
broker's host. Required: without it nodes would be told 0.0.0.0 at enrolment.
*/}}
{{- define "edgedesk.mqttHost" -}}
{{- $external := ternary .Values.mqtt.external.host "" (eq .Values.mqtt.mode "external") -}}
{{- required "mqtt.advertiseHost is required: the host (DNS name or IP) branches reach the controller's broker at; without it nodes would be told 0.0.0.0" (.Values.mqtt.advertiseHost | default $external) -}}
{{- end -}}

{{/*
Refuse what this version cannot run. Several replicas need a shared
PostgreSQL store (postgres.urlSecret), an external broker and replica
support in the controller (docs/REPLICAS.md), which this version does not
have yet: sealing keys, downlink sequence numbers, presence and the live
desk are still per process.
*/}}
{{- define "edgedesk.checks" -}}
{{- if gt (int .Values.replicas) 1 -}}
{{- fail "replicas > 1 is not supported yet (docs/REPLICAS.md): keep replicas: 1 (the leader Lease is still used, so a rolling update never runs two leaders)" -}}
{{- end -}}
{{- if not (has .Values.mqtt.mode (list "embedded" "external")) -}}
{{- fail (printf "mqtt.mode must be embedded or external, not %q" .Values.mqtt.mode) -}}
{{- end -}}
{{- if and (eq .Values.mqtt.mode "external") (not .Values.mqtt.external.host) -}}
{{- fail "mqtt.external.host is required with mqtt.mode: external" -}}
{{- end -}}
{{- end -}}
