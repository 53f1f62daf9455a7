{{/* Names. The release name is the base of every name, so `helm install ferromq`
gives pods ferromq-0.. and the headless Service ferromq-headless (the names the
Compose mirror in deploy/compose uses). */}}
{{- define "ferromq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferromq.fullname" -}}
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

{{- define "ferromq.headless" -}}
{{- printf "%s-headless" (include "ferromq.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferromq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferromq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferromq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ferromq.labels" -}}
helm.sh/chart: {{ include "ferromq.chart" . }}
{{ include "ferromq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferromq
{{- end }}

{{- define "ferromq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferromq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferromq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* DNS name of node N: <fullname>-N.<fullname>-headless.<ns>.svc.<domain> */}}
{{- define "ferromq.peerDomain" -}}
{{- printf "%s.%s.svc.%s" (include "ferromq.headless" .) .Release.Namespace .Values.cluster.clusterDomain }}
{{- end }}

{{/* FERROMQ_CLUSTER_SEEDS: every node's peer address, node 0 first. */}}
{{- define "ferromq.seeds" -}}
{{- $full := include "ferromq.fullname" . }}
{{- $domain := include "ferromq.peerDomain" . }}
{{- $port := int .Values.cluster.port }}
{{- $seeds := list }}
{{- range $i := until (int .Values.replicaCount) }}
{{- $seeds = append $seeds (printf "%s-%d.%s:%d" $full $i $domain $port) }}
{{- end }}
{{- join "," $seeds }}
{{- end }}

{{/* Bytes of a Kubernetes quantity: integer with an optional Ki/Mi/Gi/Ti/k/M/G/T
suffix. Anything else (fractions, exponents) fails the render with a message. */}}
{{- define "ferromq.quantityBytes" -}}
{{- $q := toString . }}
{{- $units := list (list "Ki" 1024) (list "Mi" 1048576) (list "Gi" 1073741824) (list "Ti" 1099511627776) (list "k" 1000) (list "M" 1000000) (list "G" 1000000000) (list "T" 1000000000000) }}
{{- $bytes := -1 }}
{{- range $u := $units }}
{{- if and (lt $bytes 0) (hasSuffix (index $u 0) $q) }}
{{- $n := trimSuffix (index $u 0) $q }}
{{- if regexMatch "^[0-9]+$" $n }}
{{- $bytes = mul (int64 $n) (index $u 1) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (lt $bytes 0) (regexMatch "^[0-9]+$" $q) }}
{{- $bytes = int64 $q }}
{{- end }}
{{- if lt $bytes 0 }}
{{- fail (printf "resources.limits.memory %q: use an integer quantity such as 1Gi or 512Mi, or set persistence.cacheCapacity" $q) }}
{{- end }}
{{- $bytes }}
{{- end }}

{{/* sled cache_capacity: persistence.cacheCapacity, else memory limit / divisor,
else the broker's default (64 MiB). */}}
{{- define "ferromq.cacheCapacity" -}}
{{- if gt (int64 .Values.persistence.cacheCapacity) 0 }}
{{- int64 .Values.persistence.cacheCapacity }}
{{- else if and .Values.resources.limits .Values.resources.limits.memory }}
{{- div (include "ferromq.quantityBytes" .Values.resources.limits.memory | int64) (int64 .Values.persistence.cacheMemoryDivisor) }}
{{- else }}
{{- 67108864 }}
{{- end }}
{{- end }}

{{/* MQTT TLS: is a server certificate configured, and which Secret holds it. */}}
{{- define "ferromq.tlsEnabled" -}}
{{- if or .Values.tls.existingSecret .Values.tls.cert .Values.tls.certManager.enabled }}true{{ end }}
{{- end }}

{{- define "ferromq.tlsSecret" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-mqtt-tls" (include "ferromq.fullname" .) }}
{{- end }}
{{- end }}

{{- define "ferromq.clusterTlsSecret" -}}
{{- if .Values.cluster.tls.existingSecret }}
{{- .Values.cluster.tls.existingSecret }}
{{- else }}
{{- printf "%s-cluster-tls" (include "ferromq.fullname" .) }}
{{- end }}
{{- end }}

{{- define "ferromq.tokenSecret" -}}
{{- if .Values.http.token.existingSecret }}
{{- .Values.http.token.existingSecret }}
{{- else }}
{{- printf "%s-http-token" (include "ferromq.fullname" .) }}
{{- end }}
{{- end }}

{{/* Render-time checks of combinations the schema cannot express. */}}
{{- define "ferromq.validate" -}}
{{- if and (not .Values.cluster.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 needs cluster.enabled=true (separate brokers would not share state)" }}
{{- end }}
{{- if and (or .Values.listeners.mqtts.enabled .Values.listeners.wss.enabled) (not (include "ferromq.tlsEnabled" .)) }}
{{- fail "listeners.mqtts / listeners.wss need tls.existingSecret, tls.cert/tls.key or tls.certManager.enabled" }}
{{- end }}
{{- if and .Values.tls.cert (not .Values.tls.key) }}
{{- fail "tls.cert needs tls.key" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" }}
{{- end }}
{{- if and .Values.cluster.tls.enabled (not .Values.cluster.tls.existingSecret) (not .Values.cluster.tls.certManager.enabled) }}
{{- fail "cluster.tls.enabled needs cluster.tls.existingSecret or cluster.tls.certManager.enabled" }}
{{- end }}
{{- if and .Values.cluster.tls.certManager.enabled (not .Values.cluster.tls.certManager.issuerRef.name) }}
{{- fail "cluster.tls.certManager.enabled needs cluster.tls.certManager.issuerRef.name" }}
{{- end }}
{{- if not (or .Values.listeners.mqtt.enabled .Values.listeners.mqtts.enabled .Values.listeners.ws.enabled .Values.listeners.wss.enabled) }}
{{- fail "enable at least one of listeners.mqtt, mqtts, ws, wss" }}
{{- end }}
{{- end }}
