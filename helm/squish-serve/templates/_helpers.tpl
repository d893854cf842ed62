{{- define "squish.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "squish.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "squish.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "squish.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "squish.selectorLabels" -}}
app.kubernetes.io/name: {{ include "squish.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "squish.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "squish.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "squish.image" -}}
{{- printf "%s:%s-%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) .Values.image.flavour }}
{{- end }}

{{/* A model given as a path is served as it is; any other name is pulled into the store. */}}
{{- define "squish.pulled" -}}
{{- if and .Values.model.pull (not (hasPrefix "/" .Values.model.name)) }}true{{ end }}
{{- end }}

{{/* What SQUISH_MODEL names: the path, or the pulled model in its scheme. */}}
{{- define "squish.modelRef" -}}
{{- if hasPrefix "/" .Values.model.name }}{{ .Values.model.name }}{{ else }}{{ printf "%s@%s" .Values.model.name .Values.model.quant }}{{ end }}
{{- end }}

{{- define "squish.apiKeySecret" -}}
{{- if .Values.apiKey.existingSecret }}{{ .Values.apiKey.existingSecret }}{{ else if .Values.apiKey.value }}{{ include "squish.fullname" . }}-api-key{{ end }}
{{- end }}

{{/* The PromQL selector for this release's pods, as the ServiceMonitor labels their series. */}}
{{- define "squish.promSelector" -}}
{{- printf "namespace=\"%s\",service=\"%s\"" .Release.Namespace (include "squish.fullname" .) }}
{{- end }}

{{- define "squish.claimName" -}}
{{- default (printf "%s-models" (include "squish.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}
