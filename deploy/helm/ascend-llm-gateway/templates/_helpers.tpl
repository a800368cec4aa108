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

{{/* Fixed whatever the release or nameOverride: the alert rules select by it
(app_kubernetes_io_part_of on every scraped series, through targetLabels). */}}
{{- define "alg.partOf" -}}
app.kubernetes.io/part-of: ascend-llm-gateway
{{- end -}}

{{- define "alg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "alg.selectorLabels" . }}
{{ include "alg.partOf" . }}
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
{{- add .Values.drain.preStopSleepSeconds (max .Values.drain.timeoutSeconds .Values.drain.delaySeconds) 15 -}}
{{- end -}}

{{/* Refuse values that render fine but cannot run. */}}
{{- define "alg.validate" -}}
{{- $m := .Values.model -}}
{{- $modes := list -}}
{{- if eq $m.source "existingClaim" -}}
{{- $modes = list $m.existingClaim.accessMode -}}
{{- else if eq $m.source "newClaim" -}}
{{- $modes = $m.newClaim.accessModes -}}
{{- if not $m.initContainer.enabled -}}
{{- fail "model.source=newClaim creates an empty volume: set model.initContainer (enabled, image, command) to fill it with the weights, or use existingClaim / hostPath" -}}
{{- end -}}
{{- end -}}
{{- $single := or (has "ReadWriteOnce" $modes) (has "ReadWriteOncePod" $modes) -}}
{{- $surge := 0 -}}
{{- if and (eq .Values.strategy.type "RollingUpdate") .Values.strategy.rollingUpdate -}}
{{- $surge = .Values.strategy.rollingUpdate.maxSurge | default 0 -}}
{{- end -}}
{{- $surges := not (has (toString $surge) (list "0" "0%")) -}}
{{- if and $single (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled .Values.keda.enabled $surges) -}}
{{- fail "the weights claim is ReadWriteOnce: it attaches to one node, so more than one replica, autoscaling or a rollout surge stalls on Multi-Attach. Use a ReadOnlyMany claim (recommended), or replicaCount 1 with strategy maxSurge 0 / maxUnavailable 1" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled -}}
{{- fail "serviceMonitor.enabled and podMonitor.enabled both scrape the pods: choose one" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled -}}
{{- fail "autoscaling.enabled and keda.enabled both scale the Deployment: choose one" -}}
{{- end -}}
{{- $btp := .Values.inferencePool.backendTrafficPolicy -}}
{{- if and .Values.inferencePool.enabled $btp.enabled (not $btp.httpRouteName) -}}
{{- fail "inferencePool.backendTrafficPolicy.enabled needs httpRouteName: the HTTPRoute whose backend is the pool" -}}
{{- end -}}
{{- if and $btp.enabled (ge (int $btp.connectionIdleTimeoutSeconds) (int .Values.gateway.keepaliveTimeoutSeconds)) -}}
{{- fail "inferencePool.backendTrafficPolicy.connectionIdleTimeoutSeconds must be below gateway.keepaliveTimeoutSeconds: the proxy must close idle connections first" -}}
{{- end -}}
{{- if and .Values.inferencePool.enabled (not .Values.inferencePool.endpointPicker.name) -}}
{{- fail "inferencePool.enabled needs inferencePool.endpointPicker.name: the Service of the endpoint picker you installed" -}}
{{- end -}}
{{- end -}}

{{/*
Where batches live: "postgres" (a Secret's URL: every replica shares them),
"sqlite" (a file in the pod's state volume: one replica), or "off" (batches
disabled, or more than one replica without PostgreSQL: a job made on one pod
would be a 404 on the next, so the API is not offered; NOTES.txt says so).
*/}}
{{- define "alg.batchStore" -}}
{{- $b := .Values.batches -}}
{{- if not $b.enabled -}}off
{{- else if $b.postgres.existingSecret -}}postgres
{{- else if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled .Values.keda.enabled -}}off
{{- else -}}sqlite
{{- end -}}
{{- end }}
