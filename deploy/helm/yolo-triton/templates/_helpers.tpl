{{/* Names and labels. */}}
{{- define "yolo-triton.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "yolo-triton.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "yolo-triton.gatewayName" -}}{{ include "yolo-triton.fullname" . }}-gateway{{- end }}
{{- define "yolo-triton.tritonName" -}}{{ include "yolo-triton.fullname" . }}-triton{{- end }}

{{- define "yolo-triton.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "yolo-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Pod template labels: the selector and managed-by, never the chart or app version, so a chart bump alone
changes no pod template and restarts no pod (GPU pods rebuild or reload their engines on every restart). */}}
{{- define "yolo-triton.gatewayPodLabels" -}}
{{ include "yolo-triton.gatewaySelector" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "yolo-triton.tritonPodLabels" -}}
{{ include "yolo-triton.tritonSelector" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The `helm test` pod: the gateway's NetworkPolicy admits it by these labels. */}}
{{- define "yolo-triton.testSelector" -}}
app.kubernetes.io/name: {{ include "yolo-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{- define "yolo-triton.gatewaySelector" -}}
app.kubernetes.io/name: {{ include "yolo-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "yolo-triton.tritonSelector" -}}
app.kubernetes.io/name: {{ include "yolo-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: triton
{{- end }}

{{/* The gateway's gRPC target: every Triton pod behind the headless Service, balanced round-robin by the client. */}}
{{- define "yolo-triton.tritonURL" -}}
dns:///{{ include "yolo-triton.tritonName" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:8001
{{- end }}

{{/* Triton must be 25.07 or later (the 2025 security fixes): refuse older release tags at render time. */}}
{{- define "yolo-triton.tritonImage" -}}
{{- $tag := .Values.triton.image.tag | toString }}
{{- $parts := regexFind "^[0-9]{2}\\.[0-9]{2}" $tag | splitList "." }}
{{- if ne (len $parts) 2 }}
{{- fail (printf "triton.image.tag %q is not an NGC release tag (YY.MM-py3)" $tag) }}
{{- end }}
{{- $release := add (mul (index $parts 0 | atoi) 100) (index $parts 1 | atoi) }}
{{- if lt $release 2507 }}
{{- fail (printf "triton.image.tag %q is older than 25.07, which carries the 2025 Triton security fixes" $tag) }}
{{- end }}
{{- printf "%s:%s" .Values.triton.image.repository $tag }}
{{- end }}

{{/* The image that builds TensorRT plans: the Triton image unless set (a plan needs the TensorRT it will run on). */}}
{{- define "yolo-triton.builderImage" -}}
{{- $b := .Values.models.tensorrt.builderImage }}
{{- $tag := .Values.triton.image.tag | toString }}
{{- if $b.tag }}
{{- if ne (regexFind "^[0-9]{2}\\.[0-9]{2}" ($b.tag | toString)) (regexFind "^[0-9]{2}\\.[0-9]{2}" $tag) }}
{{- fail (printf "models.tensorrt.builderImage.tag %q must be the same YY.MM release as triton.image.tag %q (same TensorRT)" $b.tag $tag) }}
{{- end }}
{{- end }}
{{- printf "%s:%s" (default .Values.triton.image.repository $b.repository) (default $tag ($b.tag | toString)) }}
{{- end }}

{{/* Container security context shared by every container: non-root, no privilege escalation, no capabilities. */}}
{{- define "yolo-triton.containerSecurity" -}}
allowPrivilegeEscalation: false
privileged: false
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The largest image or video request body the gateway accepts: its image or its video limit, the larger, + 64 KiB
of form (FORM_OVERHEAD in gateway/settings.py). Such bodies may spool to /tmp. */}}
{{- define "yolo-triton.mediaBodyBytes" -}}
{{- $l := .Values.gateway.limits }}
{{- add (max ($l.maxUploadBytes | int64) ($l.maxVideoBytes | int64)) 65536 }}
{{- end }}

{{/* The largest request body the gateway accepts: an image's or a video's, or with models.uploads an uploaded
checkpoint's (+ the same form; streamed to the uploads volume, not /tmp), the larger (deploy/check.py checks the
ingress limit against it). */}}
{{- define "yolo-triton.maxBodyBytes" -}}
{{- $media := include "yolo-triton.mediaBodyBytes" . | int64 }}
{{- if .Values.models.uploads.enabled }}
{{- max $media (add (.Values.models.uploads.maxModelBytes | int64) 65536) }}
{{- else }}
{{- $media }}
{{- end }}
{{- end }}

{{/* Request body limit at the ingress: the gateway's largest body, rounded up to whole MiB. */}}
{{- define "yolo-triton.ingressBodyMiB" -}}
{{- $bytes := include "yolo-triton.maxBodyBytes" . | int64 }}
{{- div (add $bytes 1048575) 1048576 }}
{{- end }}

{{/* The gateway's /tmp in MiB: every request in flight may spool its body there (multipart parts over 1 MiB), and
each video worker copies one video beside its upload while it spools it (gateway/vision/videofile.py), + 64 MiB of
slack. */}}
{{- define "yolo-triton.gatewayTmpMiB" -}}
{{- $l := .Values.gateway.limits }}
{{- $body := add (div (include "yolo-triton.mediaBodyBytes" . | int64) 1048576) 1 }}
{{- $video := add (div ($l.maxVideoBytes | int64) 1048576) 1 }}
{{- add (mul $body ($l.maxInflight | int64)) (mul $video (.Values.gateway.videoWorkers | int64)) 64 }}
{{- end }}

{{/* A Kubernetes quantity ("2Gi", "512Mi", "1.5G", "1073741824") in bytes, as an integer string. */}}
{{- define "yolo-triton.bytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- . | int64 }}
{{- else }}
{{- $q := . | toString | trim }}
{{- $m := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $unit := trimPrefix $m $q }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if or (not $m) (not (hasKey $units $unit)) }}
{{- fail (printf "%q is not a memory quantity the chart understands (e.g. 2Gi, 512Mi, 1G, or bytes)" $q) }}
{{- end }}
{{- mulf (float64 $m) (index $units $unit) | int64 }}
{{- end }}
{{- end }}

{{/* Whether the Prometheus Operator's ServiceMonitor CRD is installed (or passed with `helm template --api-versions`). */}}
{{- define "yolo-triton.hasServiceMonitor" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor" }}true{{ end }}
{{- end }}


{{/* Triton's startup probe (exec, in the Triton image's python3): every built-in model, each folder of /models with a
config.pbtxt, answers ready on Triton's HTTP health API (/v2/models/<name>/ready: open without the admin key). With
--strict-readiness=false, /v2/health/ready no longer says whether the models loaded. */}}
{{- define "yolo-triton.modelsReadyProbe" -}}
- python3
- -c
- |
  import glob, os, sys, urllib.request
  names = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob("/models/*/config.pbtxt"))
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  def ready(name):
      try:
          with opener.open(f"http://127.0.0.1:8000/v2/models/{name}/ready", timeout=2) as answer:
              return answer.status == 200
      except OSError:
          return False
  waiting = next((name for name in names if not ready(name)), None)
  print(f"not ready: {waiting}" if waiting else f"{len(names)} models in /models ready")
  sys.exit(1 if waiting or not names else 0)
{{- end }}

{{/* The Secret holding the key of Triton's restricted APIs, and the gateways' and export worker's setting from it
(the gateways list models with it, the worker loads and unloads them). */}}
{{- define "yolo-triton.adminSecret" -}}
{{ .Values.triton.adminKey.existingSecret | default (printf "%s-admin" (include "yolo-triton.tritonName" .)) }}
{{- end }}

{{- define "yolo-triton.adminKeyEnv" -}}
- name: GATEWAY_TRITON_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "yolo-triton.adminSecret" . }}
      key: {{ .Values.triton.adminKey.key | default "admin-key" }}
{{- end }}
