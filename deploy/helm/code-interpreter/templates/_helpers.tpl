{{- define "code-interpreter.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "code-interpreter.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "code-interpreter.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "code-interpreter.s3Secret" -}}
{{- default (printf "%s-s3" (include "code-interpreter.fullname" .)) .Values.s3.existingSecret -}}
{{- end -}}

{{- define "code-interpreter.keySecret" -}}
{{- default (printf "%s-api-keys" (include "code-interpreter.fullname" .)) .Values.existingApiKeySecret -}}
{{- end -}}

{{- define "code-interpreter.mcpHosts" -}}
{{- $name := include "code-interpreter.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list "localhost" "127.0.0.1" $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) -}}
{{- concat $hosts .Values.mcpAllowedHosts | join "," -}}
{{- end -}}
