{{- define "tengine.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tengine.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "tengine.versionLabels" . }}
{{- end -}}

{{- define "tengine.versionLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker") */}}
{{- define "tengine.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tengine.secretName" -}}
{{- default (printf "%s-secrets" (include "tengine.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "tengine.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tengine.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tengine.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where the Secret is mounted: each key a file, named by a TENGINE_<KEY>_FILE variable. */}}
{{- define "tengine.secretDir" -}}/run/secrets/tengine{{- end -}}

{{- define "tengine.secretVolume" -}}
- name: secrets
  secret:
    secretName: {{ include "tengine.secretName" . }}
{{- end -}}

{{- define "tengine.secretMount" -}}
- name: secrets
  mountPath: {{ include "tengine.secretDir" . }}
  readOnly: true
{{- end -}}

{{/*
One service's container: (dict "root" $ "component" "ingress" "args" (list "ingress"))
Probes on the operator listener every service opens (ports.admin).
*/}}
{{- define "tengine.container" -}}
{{- $root := .root -}}
- name: {{ .component }}
  image: {{ include "tengine.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: {{ toJson .args }}
  envFrom:
    - configMapRef:
        name: {{ include "tengine.fullname" $root }}
  ports:
    {{- if eq .component "ingress" }}
    - name: http
      containerPort: {{ $root.Values.ports.http }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ $root.Values.ports.admin }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz/live
      port: admin
    periodSeconds: {{ $root.Values.probes.periodSeconds }}
    timeoutSeconds: {{ $root.Values.probes.timeoutSeconds }}
    failureThreshold: {{ $root.Values.probes.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /healthz/ready
      port: admin
    periodSeconds: {{ $root.Values.probes.periodSeconds }}
    timeoutSeconds: {{ $root.Values.probes.timeoutSeconds }}
    failureThreshold: {{ $root.Values.probes.failureThreshold }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml (index $root.Values .component).resources | nindent 4 }}
  volumeMounts:
    {{- include "tengine.secretMount" $root | nindent 4 }}
{{- end -}}

{{/* The pod spec around it. */}}
{{- define "tengine.podSpec" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .component -}}
serviceAccountName: {{ include "tengine.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $values.terminationGracePeriodSeconds }}
terminationGracePeriodSeconds: {{ . }}
{{- end }}
containers:
  {{- include "tengine.container" . | nindent 2 }}
volumes:
  {{- include "tengine.secretVolume" $root | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "tengine.podMeta" -}}
labels:
  {{- include "tengine.selector" . | nindent 2 }}
  {{- include "tengine.versionLabels" .root | nindent 2 }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
  checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
  {{- with .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
