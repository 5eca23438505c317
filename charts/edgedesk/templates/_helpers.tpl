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
Refuse what this version cannot run. Several replicas run active/standby
(docs/REPLICAS.md) and need a shared PostgreSQL store, an external broker
(with the embedded one, nodes stay on the broker of the pod they reached)
and one data volume for all (keys, CA, model files).
*/}}
{{- define "edgedesk.checks" -}}
{{- if gt (int .Values.replicas) 1 -}}
{{- if not .Values.postgres.urlSecret -}}
{{- fail "replicas > 1 needs PostgreSQL: set postgres.urlSecret (docs/REPLICAS.md); SQLite holds one controller" -}}
{{- end -}}
{{- if ne .Values.mqtt.mode "external" -}}
{{- fail "replicas > 1 needs mqtt.mode: external: with the embedded broker, nodes stay on the broker of the pod they reached" -}}
{{- end -}}
{{- if and (not .Values.persistence.existingClaim) (ne .Values.persistence.accessMode "ReadWriteMany") -}}
{{- fail "replicas > 1 needs one data volume every replica mounts: persistence.accessMode: ReadWriteMany (or an existingClaim that is)" -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.mqtt.mode (list "embedded" "external")) -}}
{{- fail (printf "mqtt.mode must be embedded or external, not %q" .Values.mqtt.mode) -}}
{{- end -}}
{{- if and (eq .Values.mqtt.mode "external") (not .Values.mqtt.external.host) -}}
{{- fail "mqtt.external.host is required with mqtt.mode: external" -}}
{{- end -}}
{{- end -}}
