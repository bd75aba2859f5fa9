{{/* Names: everything is "<release>-onlinempo-..." unless the release name already says onlinempo. */}}
{{- define "onlinempo.fullname" -}}
{{- if contains "onlinempo" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-onlinempo" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "onlinempo.labels" -}}
app.kubernetes.io/name: onlinempo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The RayCluster's name; KubeRay labels its pods with ray.io/cluster=<name>. */}}
{{- define "onlinempo.rayCluster" -}}
{{- printf "%s-ray" (include "onlinempo.fullname" .) -}}
{{- end -}}

{{/* Selects the head pod, where the drivers (and so every gRPC endpoint and the dashboard) run. */}}
{{- define "onlinempo.headSelector" -}}
ray.io/cluster: {{ include "onlinempo.rayCluster" . }}
ray.io/node-type: head
{{- end -}}

{{- define "onlinempo.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "onlinempo.authSecret" -}}
{{- .Values.auth.existing_secret | default (printf "%s-auth" (include "onlinempo.fullname" .)) -}}
{{- end -}}

{{- define "onlinempo.claim" -}}
{{- .Values.storage.existing_claim | default (printf "%s-data" (include "onlinempo.fullname" .)) -}}
{{- end -}}

{{/* Pod-level security: non-root uid/gid 1000 (the image's user), files on the volume group-owned. */}}
{{- define "onlinempo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security; Ray, vLLM, Triton and DeepSpeed write under /tmp and $HOME, which are emptyDir volumes. */}}
{{- define "onlinempo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment of every Ray container: the two tokens (control: the services' own calls; user:
sampling clients and the dashboard). */}}
{{- define "onlinempo.env" -}}
- name: MPO_CONTROL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "onlinempo.authSecret" . }}
      key: control-token
- name: MPO_USER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "onlinempo.authSecret" . }}
      key: user-token
- name: HF_HUB_OFFLINE
  value: "1"
{{- end -}}

{{- define "onlinempo.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.storage.mount_path }}
- name: config
  mountPath: /etc/onlinempo
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/mpo
- name: shm
  mountPath: /dev/shm
{{- end -}}

{{- define "onlinempo.volumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "onlinempo.claim" . }}
- name: config
  configMap:
    name: {{ include "onlinempo.fullname" . }}-config
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
- name: shm
  emptyDir:
    medium: Memory
{{- end -}}

{{/* resources of one Ray pod from {cpu, memory, gpus}. */}}
{{- define "onlinempo.resources" -}}
requests:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory | quote }}
  {{- if gt (int .gpus) 0 }}
  nvidia.com/gpu: {{ .gpus }}
  {{- end }}
limits:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory | quote }}
  {{- if gt (int .gpus) 0 }}
  nvidia.com/gpu: {{ .gpus }}
  {{- end }}
{{- end -}}

{{/* The address one driver on the head pod uses for another: they share the pod's network. */}}
{{- define "onlinempo.local" -}}
{{- printf "127.0.0.1:%d" (int .) -}}
{{- end -}}
