{{/* The release's name for its objects, at most 63 characters. */}}
{{- define "bertd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "bertd.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bertd.labels" -}}
{{ include "bertd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "bertd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bertd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the Secrets are mounted, as bertd's configuration names them. */}}
{{- define "bertd.tlsDir" -}}/etc/bertd/tls{{- end -}}
{{- define "bertd.keysDir" -}}/etc/bertd/keys{{- end -}}

{{/*
bertd's configuration file: what the chart decides (address, model, devices, drain, metrics,
traces, TLS and key files), with .Values.config merged over it.
*/}}
{{- define "bertd.config" -}}
{{- $v := .Values -}}
{{- $server := dict
    "addr" (printf "0.0.0.0:%d" (int $v.service.port))
    "max_connection_age_ms" (mul (int $v.server.maxConnectionAgeSeconds) 1000)
    "shutdown_timeout_ms" (mul (int $v.server.shutdownTimeoutSeconds) 1000) -}}
{{- if $v.tls.enabled -}}
{{- $tls := dict "cert" (printf "%s/tls.crt" (include "bertd.tlsDir" .)) "key" (printf "%s/tls.key" (include "bertd.tlsDir" .)) -}}
{{- if $v.tls.clientCA -}}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" (include "bertd.tlsDir" .)) -}}
{{- end -}}
{{- $_ := set $server "tls" $tls -}}
{{- end -}}
{{- $engine := dict -}}
{{- if $v.gpu.enabled -}}
{{- $devices := list -}}
{{- range $i := until (int $v.gpu.count) -}}
{{- $devices = append $devices (printf "cuda:%d" $i) -}}
{{- end -}}
{{- $_ := set $engine "devices" $devices -}}
{{- $_ := set $engine "dtype" $v.gpu.dtype -}}
{{- $_ := set $engine "workers_per_device" (int $v.gpu.workersPerGpu) -}}
{{- end -}}
{{- $telemetry := dict "sampling_ratio" $v.telemetry.samplingRatio -}}
{{- if $v.metrics.enabled -}}
{{- $_ := set $telemetry "metrics_addr" (printf "0.0.0.0:%d" (int $v.metrics.port)) -}}
{{- end -}}
{{- if $v.telemetry.otlpEndpoint -}}
{{- $_ := set $telemetry "otlp_endpoint" $v.telemetry.otlpEndpoint -}}
{{- end -}}
{{- $auth := dict "health_open" $v.auth.healthOpen -}}
{{- if $v.auth.enabled -}}
{{- $_ := set $auth "api_keys_file" (printf "%s/%s" (include "bertd.keysDir" .) $v.auth.key) -}}
{{- $_ := set $auth "key_limits" (dict "max_inflight_inputs" (int $v.auth.keyLimits.maxInflightInputs) "inputs_per_second" (float64 $v.auth.keyLimits.inputsPerSecond)) -}}
{{- end -}}
{{- $config := dict "server" $server "model" (dict "dir" $v.model.path) "telemetry" $telemetry "auth" $auth -}}
{{- if $engine -}}
{{- $_ := set $config "engine" $engine -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $config (deepCopy $v.config)) -}}
{{- end -}}

{{/*
A probe on grpc.health.v1: native gRPC probes from Kubernetes 1.24 (GA); before that, or under
TLS (which native probes do not speak), GET /health on the metrics port, which answers 200 from
the same health (503 while loading, without a worker, or draining); a TCP connect to the gRPC
port when the metrics port is off.
*/}}
{{- define "bertd.probe" -}}
{{- if and (semverCompare ">=1.24-0" .root.Capabilities.KubeVersion.Version) (not .root.Values.tls.enabled) -}}
grpc:
  port: {{ .root.Values.service.port }}
  service: ""
{{- else if .root.Values.metrics.enabled -}}
httpGet:
  path: /health
  port: metrics
{{- else -}}
tcpSocket:
  port: grpc
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}
