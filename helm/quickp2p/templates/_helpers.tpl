{{/* Names, labels and the per-role facts every template shares. */}}

{{- define "quickp2p.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quickp2p.fullname" -}}
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

{{/* "<fullname>-<component>", e.g. quickp2p-stun-a. Call with (list $ "stun-a"). */}}
{{- define "quickp2p.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "quickp2p.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quickp2p.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "quickp2p.labels" -}}
helm.sh/chart: {{ include "quickp2p.chart" . }}
app.kubernetes.io/name: {{ include "quickp2p.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quickp2p
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component's resources. Call with (list $ "gateway"). */}}
{{- define "quickp2p.componentLabels" -}}
{{ include "quickp2p.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Selector labels of one component. Call with (list $ "gateway"). */}}
{{- define "quickp2p.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quickp2p.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Selector of every pod of the release (for NetworkPolicy peers). */}}
{{- define "quickp2p.releasePods" -}}
app.kubernetes.io/name: {{ include "quickp2p.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "quickp2p.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The roles, in order, with the values key of each. */}}
{{- define "quickp2p.roles" -}}
gateway: gateway
checkpoint: checkpoint
handshake: handshake
stun-a: stunA
stun-b: stunB
relay: relay
index: index
admin: admin
{{- end }}

{{/* The values of a role. Call with (list $ "stun-a"). */}}
{{- define "quickp2p.roleValues" -}}
{{- $root := index . 0 }}
{{- $key := index (include "quickp2p.roles" $root | fromYaml) (index . 1) }}
{{- toYaml (index $root.Values $key) }}
{{- end }}

{{/* Whether a role is deployed: "true" or "". Call with (list $ "stun-a"). */}}
{{- define "quickp2p.enabled" -}}
{{- $v := include "quickp2p.roleValues" . | fromYaml }}
{{- if $v.enabled }}true{{ end }}
{{- end }}

{{/* The ops HTTP port of a role. Call with (list $ "stun-a"). */}}
{{- define "quickp2p.httpPort" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- if hasPrefix "stun-" $role }}{{ $root.Values.stun.ports.http }}
{{- else }}{{ (include "quickp2p.roleValues" . | fromYaml).ports.http }}
{{- end }}
{{- end }}

{{/* Whether a role runs on the host network: "true" or "". Call with (list $ "relay"). */}}
{{- define "quickp2p.hostNetwork" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- if and (hasPrefix "stun-" $role) $root.Values.stun.hostNetwork }}true
{{- else if and (eq $role "relay") $root.Values.relay.hostNetwork }}true
{{- end }}
{{- end }}

{{/* Whether a role reads the Kubernetes API for its addresses: "true" or "". */}}
{{- define "quickp2p.discovers" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- if and (eq $root.Values.discovery.mode "kubernetes") (has $role (list "gateway" "stun-a" "stun-b" "relay")) }}true{{ end }}
{{- end }}

{{/* Whether some discovering role is node-bound (NodePort or host network): then nodes are read. */}}
{{- define "quickp2p.readsNodes" -}}
{{- $v := .Values }}
{{- if eq $v.discovery.mode "kubernetes" }}
{{- if or (eq $v.gateway.service.type "NodePort") $v.stun.hostNetwork (eq $v.stun.service.type "NodePort") $v.relay.hostNetwork (eq $v.relay.service.type "NodePort") }}true{{ end }}
{{- end }}
{{- end }}

{{- define "quickp2p.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quickp2p.componentName" (list . "discovery")) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "quickp2p.secretName" -}}
{{- default (include "quickp2p.componentName" (list . "secrets")) .Values.secrets.existingSecret }}
{{- end }}

{{/* Whether the in-chart Redis runs: "true" or "". */}}
{{- define "quickp2p.internalRedis" -}}
{{- if and .Values.redis.internal.enabled (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) }}true{{ end }}
{{- end }}

{{/* The gRPC URL of an in-cluster role Service. Call with (list $ "checkpoint" port). */}}
{{- define "quickp2p.grpcUrl" -}}
{{- printf "http://%s:%v" (include "quickp2p.componentName" (list (index . 0) (index . 1))) (index . 2) }}
{{- end }}

{{/* The gateway's TLS Secret name, or "" when each replica makes its own certificate. */}}
{{- define "quickp2p.gatewayTlsSecret" -}}
{{- if .Values.gateway.tls.existingSecret }}{{ .Values.gateway.tls.existingSecret }}
{{- else if .Values.gateway.tls.generate }}{{ include "quickp2p.componentName" (list . "gateway-tls") }}
{{- end }}
{{- end }}

{{/* First and last port of relay.portRange. */}}
{{- define "quickp2p.relayPortRange" -}}
{{- $parts := splitList "-" .Values.relay.portRange }}
{{- if ne (len $parts) 2 }}{{ fail "relay.portRange must be MIN-MAX, e.g. 49152-65535" }}{{ end }}
{{- $min := atoi (index $parts 0) }}
{{- $max := atoi (index $parts 1) }}
{{- if or (lt $min 1024) (gt $max 65535) (gt $min $max) }}{{ fail "relay.portRange must be within 1024-65535, MIN <= MAX" }}{{ end }}
min: {{ $min }}
max: {{ $max }}
{{- end }}

{{/* The QP_REDIS_URL env entry (a list item). */}}
{{- define "quickp2p.redisUrlEnv" -}}
- name: QP_REDIS_URL
{{- if .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.external.existingSecret }}, key: {{ .Values.redis.external.existingSecretKey }}}
{{- else if .Values.redis.external.url }}
  valueFrom:
    secretKeyRef: {name: {{ include "quickp2p.secretName" . }}, key: redis-url}
{{- else if include "quickp2p.internalRedis" . }}
  value: "redis://{{ include "quickp2p.componentName" (list . "redis") }}:6379"
{{- else }}
{{- fail "redis: set redis.external.url (or redis.external.existingSecret), or enable redis.internal for a trial" }}
{{- end }}
{{- end }}
