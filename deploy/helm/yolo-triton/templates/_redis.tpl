{{/* Redis mode (README, "Scaling out"): keys, rate limits and usage shared by every gateway replica. */}}
{{- define "yolo-triton.redisName" -}}{{ include "yolo-triton.fullname" . }}-redis{{- end }}

{{- define "yolo-triton.redisSelector" -}}
app.kubernetes.io/name: {{ include "yolo-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "yolo-triton.redisSecret" -}}
{{- .Values.redis.existingSecret | default (include "yolo-triton.redisName" .) -}}
{{- end }}

{{- define "yolo-triton.redisURL" -}}
{{- if .Values.redis.deploy -}}
redis://{{ include "yolo-triton.redisName" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:6379/0
{{- else -}}
{{- required "redis.url is required when redis.enabled is true and redis.deploy is false" .Values.redis.url -}}
{{- end -}}
{{- end }}

{{/* The gateway's Redis settings (nothing when redis.enabled is false); the password comes from a Secret. */}}
{{- define "yolo-triton.redisEnv" -}}
{{- if .Values.redis.enabled }}
- name: GATEWAY_REDIS_URL
  value: {{ include "yolo-triton.redisURL" . | quote }}
- name: GATEWAY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "yolo-triton.redisSecret" . }}
      key: {{ .Values.redis.passwordKey }}
{{- end }}
{{- end }}
