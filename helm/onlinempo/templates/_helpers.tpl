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

{{- define "onlinempo.stateClaim" -}}
{{- .Values.state_storage.existing_claim | default (printf "%s-state" (include "onlinempo.fullname" .)) -}}
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

{{/* The run store's ReadWriteOnce volume: on the head pod only, where the controller (its one writer) runs. */}}
{{- define "onlinempo.stateVolumeMount" -}}
- name: state
  mountPath: {{ .Values.state_storage.mount_path }}
{{- end -}}

{{- define "onlinempo.stateVolume" -}}
- name: state
  persistentVolumeClaim:
    claimName: {{ include "onlinempo.stateClaim" . }}
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

{{/* The custom Ray resource each pod of a worker group offers ("rollout", "trainer", "cpu"). */}}
{{- define "onlinempo.groupResource" -}}
{{- printf "onlinempo_%s" . -}}
{{- end -}}

{{/* Where the head container mounts tls.existing_secret (tls.crt, tls.key). */}}
{{- define "onlinempo.tlsDir" -}}
/etc/onlinempo-tls
{{- end -}}

{{/* "true" when the server of this service ("rollout", ...) speaks TLS: the rollout and the controller,
whose Services may leave the cluster, once tls.existing_secret is set. Called with (dict "root" $ "service" name). */}}
{{- define "onlinempo.tls" -}}
{{- if and .root.Values.tls.existing_secret (has .service (list "rollout" "controller")) -}}
true
{{- end -}}
{{- end -}}

{{/* The address one driver on the head pod uses for another's service (they share the pod's network): its
port, or with TLS its plaintext loopback port. Called with (dict "root" $ "service" name). */}}
{{- define "onlinempo.local" -}}
{{- $port := index .root.Values.ports .service -}}
{{- if include "onlinempo.tls" . -}}
{{- $port = index .root.Values.ports (printf "%s_loopback" .service) -}}
{{- end -}}
{{- printf "127.0.0.1:%d" (int $port) -}}
{{- end -}}
