{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "llm-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "llm-router.fullname" -}}
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

{{- define "llm-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-router.labels" -}}
helm.sh/chart: {{ include "llm-router.chart" . }}
{{ include "llm-router.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llm-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llm-router.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "llm-router.configMapName" -}}
{{- default (include "llm-router.fullname" .) .Values.existingConfigMap }}
{{- end }}

{{/* Seconds from SIGTERM-to-preStop until the kubelet kills the container. */}}
{{- define "llm-router.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown }}
{{- add $s.preStopSleepSeconds $s.drainSeconds $s.graceSeconds $s.marginSeconds }}
{{- end }}

{{/* The router config: .Values.config, with .Values.auth filled into its `auth` where it does
not set a key itself. */}}
{{- define "llm-router.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $auth := dict }}
{{- if .Values.auth.required }}{{- $_ := set $auth "required" true }}{{- end }}
{{- if ne .Values.auth.reflection "open" }}{{- $_ := set $auth "reflection" .Values.auth.reflection }}{{- end }}
{{- with .Values.auth.trustedHeader.name }}
{{- $_ := set $auth "trusted_header" (dict "name" . "trusted_peers" $.Values.auth.trustedHeader.trustedPeers) }}
{{- end }}
{{- if $auth }}
{{- $_ := set $config "auth" (merge (default dict (get $config "auth")) $auth) }}
{{- end }}
{{- toYaml $config }}
{{- end }}
