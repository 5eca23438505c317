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
