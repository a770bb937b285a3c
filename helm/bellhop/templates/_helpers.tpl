{{/* Names and labels. */}}
{{- define "bellhop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bellhop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bellhop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bellhop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "bellhop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "bellhop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "bellhop.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "bellhop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "bellhop.redisLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "bellhop.redisSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "bellhop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bellhop.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bellhop.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "bellhop.fullname" .)) .Values.jwt.existingSecret -}}
{{- end -}}

{{- define "bellhop.redisTrialName" -}}
{{- printf "%s-redis" (include "bellhop.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The node's own deadline is DRAIN_SECONDS + 20 s; the kubelet must wait for the preStop sleep and that. */}}
{{- define "bellhop.terminationGracePeriodSeconds" -}}
{{- add .Values.lifecycle.preStopSleepSeconds .Values.config.drainSeconds 20 .Values.lifecycle.terminationMarginSeconds -}}
{{- end -}}
