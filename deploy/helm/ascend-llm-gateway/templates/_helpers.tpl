{{- define "alg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alg.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "alg.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "alg.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "alg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "alg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "alg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "alg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "alg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Startup budget: model load + graph capture + warmup (values.startup). */}}
{{- define "alg.startupBudget" -}}
{{- add .Values.startup.modelLoadSeconds .Values.startup.graphCaptureSeconds .Values.startup.warmupSeconds -}}
{{- end -}}

{{/* failureThreshold = ceil(budget / period). */}}
{{- define "alg.startupFailureThreshold" -}}
{{- $budget := int (include "alg.startupBudget" .) -}}
{{- $period := int .Values.startup.periodSeconds -}}
{{- div (add $budget $period -1) $period -}}
{{- end -}}

{{/* Grace = preStop sleep + drain timeout + 15 s (abort, [DONE], engine shutdown). */}}
{{- define "alg.terminationGrace" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.timeoutSeconds 15 -}}
{{- end -}}
