{{/* Uploaded models (models.uploads; README "Your own models"): one ReadWriteMany volume shared by the gateways, the
export worker and Triton, laid out as
    models/       GATEWAY_MODELS_DIR: uploads/ (the gateways write it), staging/ and versions/ (the worker's)
    repository/   the uploaded versions' Triton repository (the worker writes it, every Triton pod reads it)
    jobs/         GATEWAY_JOBS_DIR: video jobs' videos and results (the gateways write it; any replica runs a job)
mounted at the same path in every container. Writers run as uid/gid 10001 (the gateways and the worker); Triton
(uid 1000) only reads. */}}
{{- define "yolo-triton.uploadsMount" -}}/var/lib/yolo-triton{{- end }}
{{- define "yolo-triton.uploadsRepository" -}}{{ include "yolo-triton.uploadsMount" . }}/repository{{- end }}
{{- define "yolo-triton.modelsDir" -}}{{ include "yolo-triton.uploadsMount" . }}/models{{- end }}
{{- define "yolo-triton.jobsDir" -}}{{ include "yolo-triton.uploadsMount" . }}/jobs{{- end }}

{{- define "yolo-triton.uploadsClaim" -}}
{{- required "models.uploads.existingClaim is required with models.uploads.enabled: a ReadWriteMany PersistentVolumeClaim shared by the gateways, the export worker and Triton (deploy/README.md, \"Uploaded models\")" .Values.models.uploads.existingClaim }}
{{- end }}

{{- define "yolo-triton.workerName" -}}{{ include "yolo-triton.fullname" . }}-worker{{- end }}

{{- define "yolo-triton.workerSelector" -}}
app.kubernetes.io/name: {{ include "yolo-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Uploads need the registry shared by every gateway and the worker: Redis. */}}
{{- define "yolo-triton.uploadsGuard" -}}
{{- if and .Values.models.uploads.enabled (not .Values.redis.enabled) }}
{{- fail "models.uploads.enabled needs redis.enabled: the model registry (versions, status, the alias each gateway resolves) is shared through Redis by every gateway and the export worker" }}
{{- end }}
{{- end }}

{{/* The gateway pods' init container: the volume's folders, created by uid 10001 before the gateway mounts its
sub-folder (the kubelet would create a missing one as root) and before a Triton pod reads repository/ (a missing
repository folder leaves Triton serving nothing; the worker creates it too). */}}
{{- define "yolo-triton.uploadsFolders" -}}
- name: uploads-folders
  image: "{{ .Values.gateway.image.repository }}:{{ .Values.gateway.image.tag }}"
  imagePullPolicy: {{ .Values.gateway.image.pullPolicy | default "IfNotPresent" }}
  command:
    - python
    - -c
    - |
      import os, sys
      root = "{{ include "yolo-triton.uploadsMount" . }}"
      try:
          for sub in ("models/uploads", "models/staging", "models/versions", "repository", "jobs"):
              os.makedirs(os.path.join(root, sub), mode=0o755, exist_ok=True)
      except PermissionError as exc:
          sys.exit(f"{exc}: the root of models.uploads.existingClaim must be writable by uid or gid 10001")
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: 500m, memory: 128Mi}
  securityContext:
    {{- include "yolo-triton.containerSecurity" . | nindent 4 }}
    readOnlyRootFilesystem: true
  volumeMounts:
    - name: uploads
      mountPath: {{ include "yolo-triton.uploadsMount" . }}
{{- end }}

{{/* The worker's probes: its alive file (the argument) was touched within the last 60 s. */}}
{{- define "yolo-triton.workerAliveProbe" -}}
["python", "-c", "import os, sys, time; sys.exit(time.time() - os.stat({{ . | squote }}).st_mtime > 60)"]
{{- end }}
