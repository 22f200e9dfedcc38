{{/*
What each role's container needs beyond what every role shares: its binary, container ports,
QP_* settings and volumes. One definition per role, read by deployments.yaml as YAML:

  binary:  the executable in the image
  ports:   containerPorts (name, containerPort, protocol)
  env:     role settings (the chart's part; values' env maps come after and win)
  mounts:  which of the shared volumes it mounts: secrets, gateway-tls
  redis:   whether it gets QP_REDIS_URL (every role but the STUN pair)
*/}}

{{- define "quickp2p.role.gateway" -}}
{{- $v := .Values.gateway }}
binary: quickp2p-gateway
redis: true
ports:
  - {name: quic, containerPort: {{ $v.ports.quic }}, protocol: UDP}
  - {name: deliver, containerPort: {{ $v.ports.deliver }}, protocol: TCP}
env:
  - {name: QP_GATEWAY_UDP_ADDR, value: "0.0.0.0:{{ $v.ports.quic }}"}
  - {name: QP_GATEWAY_GRPC_ADDR, value: "0.0.0.0:{{ $v.ports.deliver }}"}
  - {name: QP_GATEWAY_ADVERTISED_GRPC, value: "http://$(QP_POD_IP):{{ $v.ports.deliver }}"}
  - {name: QP_GATEWAY_CHECKPOINT_URL, value: {{ include "quickp2p.grpcUrl" (list . "checkpoint" .Values.checkpoint.ports.grpc) | quote }}}
  {{- if .Values.handshake.enabled }}
  - {name: QP_GATEWAY_HANDSHAKE_URL, value: {{ include "quickp2p.grpcUrl" (list . "handshake" .Values.handshake.ports.grpc) | quote }}}
  {{- end }}
  {{- if .Values.index.enabled }}
  - {name: QP_GATEWAY_INDEX_URL, value: {{ include "quickp2p.grpcUrl" (list . "index" .Values.index.ports.grpc) | quote }}}
  {{- end }}
  {{- if include "quickp2p.gatewayTlsSecret" . }}
  - {name: QP_GATEWAY_CERT_FILE, value: /etc/quickp2p/tls/tls.crt}
  - {name: QP_GATEWAY_KEY_FILE, value: /etc/quickp2p/tls/tls.key}
  {{- end }}
mounts: [{{ if include "quickp2p.gatewayTlsSecret" . }}gateway-tls{{ end }}]
{{- end }}

{{- define "quickp2p.role.checkpoint" -}}
binary: quickp2p-checkpoint
redis: true
ports:
  - {name: grpc, containerPort: {{ .Values.checkpoint.ports.grpc }}, protocol: TCP}
env:
  - {name: QP_CHECKPOINT_GRPC_ADDR, value: "0.0.0.0:{{ .Values.checkpoint.ports.grpc }}"}
mounts: []
{{- end }}

{{- define "quickp2p.role.handshake" -}}
binary: quickp2p-handshake
redis: true
ports:
  - {name: grpc, containerPort: {{ .Values.handshake.ports.grpc }}, protocol: TCP}
env:
  - {name: QP_HANDSHAKE_GRPC_ADDR, value: "0.0.0.0:{{ .Values.handshake.ports.grpc }}"}
  # the relays' TURN shared secret: relay grants are minted with it
  - {name: QP_HANDSHAKE_RELAY_SHARED_SECRET_FILE, value: /etc/quickp2p/secrets/turn-shared-secret}
mounts: [secrets]
{{- end }}

{{- define "quickp2p.role.index" -}}
binary: quickp2p-index
redis: true
ports:
  - {name: grpc, containerPort: {{ .Values.index.ports.grpc }}, protocol: TCP}
env:
  - {name: QP_INDEX_GRPC_ADDR, value: "0.0.0.0:{{ .Values.index.ports.grpc }}"}
mounts: []
{{- end }}

{{- define "quickp2p.role.admin" -}}
binary: quickp2p-admin
redis: true
ports:
  - {name: grpc, containerPort: {{ .Values.admin.ports.grpc }}, protocol: TCP}
env:
  - {name: QP_ADMIN_GRPC_ADDR, value: "0.0.0.0:{{ .Values.admin.ports.grpc }}"}
  # lines `read|write NAME TOKEN` (services/admin/src/tokens.rs)
  - {name: QP_ADMIN_TOKENS_FILE, value: /etc/quickp2p/secrets/admin-tokens}
  - {name: QP_ADMIN_ADVERTISED_GRPC, value: "http://$(QP_POD_IP):{{ .Values.admin.ports.grpc }}"}
  {{- if .Values.index.enabled }}
  - {name: QP_ADMIN_INDEX_URL, value: {{ include "quickp2p.grpcUrl" (list . "index" .Values.index.ports.grpc) | quote }}}
  {{- end }}
mounts: [secrets]
{{- end }}

{{/* stun-a and stun-b. Call with (list $ "a"). */}}
{{- define "quickp2p.role.stun" -}}
{{- $root := index . 0 }}
{{- $member := index . 1 }}
{{- $partner := ternary "b" "a" (eq $member "a") }}
{{- $v := $root.Values }}
{{- $own := index $v (printf "stun%s" (upper $member)) }}
{{- $other := index $v (printf "stun%s" (upper $partner)) }}
{{- $p := $v.stun.ports }}
binary: quickp2p-stun
redis: false
ports:
  - {name: stun, containerPort: {{ $p.primary }}, protocol: UDP}
  - {name: stun-alt, containerPort: {{ $p.alternate }}, protocol: UDP}
  - {name: control, containerPort: {{ $p.control }}, protocol: TCP}
env:
  - {name: QP_STUN_MEMBER, value: {{ $member | quote }}}
  - {name: QP_STUN_BIND_IP, value: "0.0.0.0"}
  - {name: QP_STUN_PRIMARY_PORT, value: {{ $p.primary | quote }}}
  - {name: QP_STUN_ALTERNATE_PORT, value: {{ $p.alternate | quote }}}
  - {name: QP_STUN_CONTROL_ADDR, value: "0.0.0.0:{{ $p.control }}"}
  {{- if not $other.enabled }}
  - {name: QP_STUN_PARTNER_ADDR, value: none}
  {{- else }}
  - {name: QP_STUN_PARTNER_CONTROL_URL, value: {{ include "quickp2p.grpcUrl" (list $root (printf "stun-%s-control" $partner) $p.control) | quote }}}
  {{- if eq $v.discovery.mode "static" }}
  - {name: QP_STUN_PARTNER_ADDR, value: "{{ required (printf "stun%s.advertisedIP is required with discovery.mode static" (upper $partner)) $other.advertisedIP }}:{{ $p.primary }}"}
  {{- end }}
  {{- end }}
  {{- if eq $v.discovery.mode "static" }}
  - {name: QP_STUN_ADVERTISED_IP, value: {{ required (printf "stun%s.advertisedIP is required with discovery.mode static" (upper $member)) $own.advertisedIP | quote }}}
  {{- end }}
mounts: []
{{- end }}

{{- define "quickp2p.role.stun-a" -}}
{{ include "quickp2p.role.stun" (list . "a") }}
{{- end }}

{{- define "quickp2p.role.stun-b" -}}
{{ include "quickp2p.role.stun" (list . "b") }}
{{- end }}

{{- define "quickp2p.role.relay" -}}
{{- $v := .Values.relay }}
{{- $range := include "quickp2p.relayPortRange" . | fromYaml }}
binary: quickp2p-relay
redis: true
ports:
  - {name: turn, containerPort: {{ $v.ports.turn }}, protocol: UDP}
  - {name: control, containerPort: {{ $v.ports.control }}, protocol: TCP}
  {{- if not $v.hostNetwork }}
  {{- if gt (sub $range.max $range.min) 199 }}
  {{- fail "relay.portRange: without relay.hostNetwork every relayed port is listed in the Service; keep the range at 200 ports or fewer" }}
  {{- end }}
  {{- range $i, $port := untilStep (int $range.min) (int (add1 $range.max)) 1 }}
  - {name: relay-{{ $i }}, containerPort: {{ $port }}, protocol: UDP}
  {{- end }}
  {{- end }}
env:
  - {name: QP_RELAY_LISTEN_ADDR, value: "0.0.0.0:{{ $v.ports.turn }}"}
  - {name: QP_RELAY_CONTROL_ADDR, value: "0.0.0.0:{{ $v.ports.control }}"}
  - {name: QP_RELAY_PORT_RANGE, value: {{ $v.portRange | quote }}}
  - {name: QP_RELAY_SHARED_SECRET_FILE, value: /etc/quickp2p/secrets/turn-shared-secret}
  {{- if $v.advertisedIP }}
  - {name: QP_RELAY_ADVERTISED_ADDR, value: "{{ $v.advertisedIP }}:{{ $v.ports.turn }}"}
  {{- else if eq .Values.discovery.mode "kubernetes" }}
  # the advertised TURN address and XOR-RELAYED-ADDRESS IP come from the relay's Service
  # (QP_DISCOVERY=kubernetes): the node's external address with hostNetwork, else the load
  # balancer's ingress or the node port
  {{- else if $v.hostNetwork }}
  - {name: QP_RELAY_ADVERTISED_ADDR, value: "$(QP_HOST_IP):{{ $v.ports.turn }}"}
  {{- else }}
  {{- fail "relay.advertisedIP is required without relay.hostNetwork and with discovery.mode static (the load balancer's public IP)" }}
  {{- end }}
mounts: [secrets]
{{- end }}
