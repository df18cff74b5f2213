{{/*
The chart name, or nameOverride.
*/}}
{{- define "breakwater.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: release name + chart name, unless the release name already
contains the chart name. Truncated to 63 characters (Service names are DNS labels).
*/}}
{{- define "breakwater.fullname" -}}
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

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "breakwater.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods; never change them (Deployment selectors are immutable).
*/}}
{{- define "breakwater.selectorLabels" -}}
app.kubernetes.io/name: {{ include "breakwater.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
commonLabels and podLabels may not set a label the chart sets itself: the key would appear twice, and
the one that wins could make the pods miss their Deployment's selector.
*/}}
{{- define "breakwater.checkLabels" -}}
{{- $own := list "helm.sh/chart" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/part-of" }}
{{- range $values := list "commonLabels" "podLabels" }}
{{- range $key, $_ := (get $.Values $values) }}
{{- if has $key $own }}
{{- fail (printf "%s may not set %s: the chart sets it (and selects its pods by the app.kubernetes.io ones)" $values $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "breakwater.labels" -}}
helm.sh/chart: {{ include "breakwater.chart" . }}
{{ include "breakwater.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: breakwater
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "breakwater.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "breakwater.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Names derived from the full name, in one place: the operator, its tests and the docs rely on them.
*/}}
{{- define "breakwater.webhookServiceName" -}}
{{- include "breakwater.fullname" . }}
{{- end }}

{{- define "breakwater.webhookConfigurationName" -}}
{{- include "breakwater.fullname" . }}
{{- end }}

{{- define "breakwater.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "breakwater.fullname" .) }}
{{- end }}

{{- define "breakwater.certificateName" -}}
{{- printf "%s-webhook" (include "breakwater.fullname" .) }}
{{- end }}

{{- define "breakwater.issuerName" -}}
{{- printf "%s-selfsigned" (include "breakwater.fullname" .) }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}, falling back to the chart's appVersion.
Usage: include "breakwater.imageRef" (dict "image" .Values.image "fallback" .Values.image "chart" .Chart)
*/}}
{{- define "breakwater.imageRef" -}}
{{- $repository := .image.repository | default .fallback.repository | required "image.repository is required: no public Breakwater image exists yet. Build one with `make image`, push it to your registry and set image.repository (see docs/install.md, \"The image\")" }}
{{- /* One image for both: the operator's digest too, unless the sidecar names a repository or tag of its own. */}}
{{- $digest := .image.digest | default (and (not .image.repository) (not .image.tag) .fallback.digest) | default "" }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- $tag := .image.tag | default .fallback.tag | default .chart.AppVersion }}
{{- printf "%s:%s" $repository (toString $tag) }}
{{- end }}
{{- end }}

{{- define "breakwater.operatorImage" -}}
{{- include "breakwater.imageRef" (dict "image" .Values.image "fallback" .Values.image "chart" .Chart) }}
{{- end }}

{{- define "breakwater.sidecarImage" -}}
{{- include "breakwater.imageRef" (dict "image" .Values.sidecar.image "fallback" .Values.image "chart" .Chart) }}
{{- end }}

{{/*
The webhook's namespaceSelector: the opt-in selector from values (or every namespace), always
excluding the system namespaces the operator never injects (kube-system, kube-public,
kube-node-lease), the release namespace and webhook.excludeNamespaces, and limited to
operator.watchNamespaces when set. The same rule as the operator's own (controller/webhook.py).
*/}}
{{- define "breakwater.namespaceSelector" -}}
{{- $excluded := concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq }}
{{- $expressions := list (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $excluded) }}
{{- with .Values.operator.watchNamespaces }}
{{- $expressions = append $expressions (dict "key" "kubernetes.io/metadata.name" "operator" "In" "values" .) }}
{{- end }}
{{- $selector := dict }}
{{- if not .Values.webhook.injectAllNamespaces }}
{{- $selector = deepCopy (.Values.webhook.namespaceSelector | default dict) }}
{{- end }}
{{- $_ := set $selector "matchExpressions" (concat ($selector.matchExpressions | default list) $expressions) }}
{{- toYaml $selector }}
{{- end }}

{{/*
Fail early, with the value to change, when the cluster lacks an API a chosen option needs.
`helm template` has no cluster: pass --api-versions (e.g. --api-versions cert-manager.io/v1).
*/}}
{{- define "breakwater.requireApi" -}}
{{- $api := index . 0 }}
{{- $option := index . 1 }}
{{- $capabilities := index . 2 }}
{{- if not ($capabilities.APIVersions.Has $api) }}
{{- fail (printf "%s=true needs the %s API, which this cluster does not serve: install it first (or pass --api-versions %s to helm template)" $option $api $api) }}
{{- end }}
{{- end }}
