{{- define "shadowline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shadowline.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shadowline.configMap" -}}
{{- .Values.existingConfigMap | default (printf "%s-config" (include "shadowline.fullname" .)) -}}
{{- end -}}

{{/* The pod spec every component shares; call with (dict "root" $ "name" NAME "args" LIST "port" PORT "probe" PATH "resources" RES) */}}
{{- define "shadowline.pod" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "shadowline.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
  annotations:
    checksum/config: {{ $root.Values.config | sha256sum }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .name }}
      image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag }}"
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        - name: SHADOWLINE_CONFIG
          value: /etc/shadowline/shadowline.toml
        - name: SHADOWLINE_KAFKA_BOOTSTRAP
          value: {{ $root.Values.kafka.bootstrapServers | quote }}
        - name: SHADOWLINE_KAFKA_NAMESPACE
          value: {{ $root.Values.kafka.namespace | quote }}
        - name: HOME
          value: /tmp
      {{- if $root.Values.secretEnv.name }}
      envFrom:
        - secretRef:
            name: {{ $root.Values.secretEnv.name }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .port }}
          protocol: TCP
      readinessProbe:
        {{- if .probe }}
        httpGet: {path: {{ .probe }}, port: http}
        {{- else }}
        tcpSocket: {port: http}
        {{- end }}
        periodSeconds: 10
      livenessProbe:
        {{- if .probe }}
        httpGet: {path: {{ .probe }}, port: http}
        {{- else }}
        tcpSocket: {port: http}
        {{- end }}
        initialDelaySeconds: 30
        periodSeconds: 20
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/shadowline
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if $root.Values.secretFiles.name }}
        - name: secret-files
          mountPath: {{ $root.Values.secretFiles.mountPath }}
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "shadowline.configMap" $root }}
    - name: tmp
      emptyDir: {}
    {{- if $root.Values.secretFiles.name }}
    - name: secret-files
      secret:
        secretName: {{ $root.Values.secretFiles.name }}
    {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
