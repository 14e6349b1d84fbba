{{/*
Names, labels, images and the trainer's environment. Every helper is named tfstack.*.
*/}}

{{- define "tfstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name. Kept to 40 characters: the trainer Job's pods are "<fullname>-trainer-<index>",
which must stay a DNS label (63) with room for the index.
*/}}
{{- define "tfstack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tfstack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name, instance, component only (immutable in Deployments and Jobs). */}}
{{- define "tfstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tfstack.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Standard labels. Call with (dict "context" $ "component" "serving"). */}}
{{- define "tfstack.labels" -}}
{{ include "tfstack.stableLabels" . }}
helm.sh/chart: {{ include "tfstack.chart" .context }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
{{- end -}}

{{/*
Labels that do not change with the chart version: for pod templates whose change would be refused or
would restart pods for nothing. A Job's spec.template is immutable (kubernetes/kubernetes
pkg/apis/batch/validation/validation.go, ValidateJobSpecUpdate), and so are a JobSet's replicatedJobs: a helm.sh/chart or
app.kubernetes.io/version label in them makes every `helm upgrade` to a new chart version fail.
Call with (dict "context" $ "component" "trainer" "podLabels" .Values.trainer.podLabels).
*/}}
{{- define "tfstack.stableLabels" -}}
{{ include "tfstack.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: tfstack
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- with .podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The trainer's exit-code contract (docs/distributed.md; `python -m trainer search` is the container's
entrypoint, no shell in between, so these are the container's exit codes). The ONE place the chart
names them; the failure policies of the JobSet, the Indexed Job and the docs refer to these names.
  done 0          model published, or nothing to do
  crash 1         anything unexpected: retryable
  badInput 2      usage, configuration or data error: do not retry
  notPublished 3  the search finished but the publish gate refused the model: do not retry, look
  peerLost 4      a peer was lost or the group could not form: restart the whole group
Use: {{ $codes := include "tfstack.trainer.exitCodes" . | fromYaml }}
*/}}
{{- define "tfstack.trainer.exitCodes" -}}
done: 0
crash: 1
badInput: 2
notPublished: 3
peerLost: 4
{{- end -}}

{{/*
The trainer's save deadline after SIGTERM (TFSTACK_TERMINATION_GRACE_SECONDS): the pod's
terminationGracePeriodSeconds less trainer.terminationGraceMarginSeconds, so that the trainer has saved and
exited before the kubelet's SIGKILL.
*/}}
{{- define "tfstack.trainer.saveDeadline" -}}
{{- $t := .Values.trainer -}}
{{- $deadline := sub (int $t.terminationGracePeriodSeconds) (int $t.terminationGraceMarginSeconds) -}}
{{- if lt $deadline 1 -}}
{{- fail (printf "trainer.terminationGraceMarginSeconds (%v) must be less than trainer.terminationGracePeriodSeconds (%v): the trainer would have no time to save before SIGKILL." $t.terminationGraceMarginSeconds $t.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- $deadline -}}
{{- end -}}

{{/*
The trainer's workload kind: trainer.mode, or when it is "" a JobSet for more than one pod (several
workers, or several groups and their oracle) and a plain Indexed Job for one (a single pod has no group
to restart).
*/}}
{{- define "tfstack.trainer.mode" -}}
{{- if .Values.trainer.mode -}}
{{- .Values.trainer.mode -}}
{{- else if or (gt (int .Values.trainer.workers) 1) (gt (int .Values.trainer.groups) 1) -}}
jobset
{{- else -}}
indexedJob
{{- end -}}
{{- end -}}

{{/*
Pod-level scheduling shared by every workload: Kueue/gang schedulers, priorities, the GPU runtime class
(k3s and RKE2 register NVIDIA's runtime as RuntimeClass "nvidia"), spreading. Call with the component's
values (.Values.trainer or .Values.serving).
*/}}
{{- define "tfstack.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .schedulerName }}
schedulerName: {{ . }}
{{- end }}
{{- with .runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Object names. The trainer's workload is "<fullname>-trainer[-<runId>]": a new trainer.runId is a new
Job/JobSet (a new search), as a Job's pod template cannot be changed in place. At most 44 characters:
JobSet's webhook requires "<jobset>-worker-<group>-<index>-abcde" to be a DNS label (63) for up to 1000
workers (jobset_webhook.go, "pod names generated for this JobSet will exceed 63 characters"), one
character less for each further digit of the last group (up to 10 groups: 44).
*/}}
{{- define "tfstack.trainer.fullname" -}}
{{- $suffix := "-trainer" -}}
{{- with .Values.trainer.runId }}{{ $suffix = printf "-trainer-%s" (toString .) }}{{ end -}}
{{- $groupDigits := len (toString (sub (int .Values.trainer.groups) 1)) -}}
{{- $limit := sub (sub 45 $groupDigits) (len $suffix) -}}
{{- printf "%s%s" (include "tfstack.fullname" . | trunc (int $limit) | trimSuffix "-") $suffix -}}
{{- end -}}
{{/*
The failure message of a child Job that the DisruptionTarget rule failed (Kubernetes,
pkg/controller/job/pod_failure_policy.go: "Pod %s/%s has condition %v matching %v rule at index %d"), as a
pattern for the JobSet's onJobFailureMessagePatterns (RE2, unanchored).
*/}}
{{- define "tfstack.trainer.disruptionMessagePattern" -}}has condition DisruptionTarget matching FailJob rule{{- end -}}
{{/* The JobSet's workers: child Job g is "<jobset>-worker-<g>" (placement.GenJobName), one per group. */}}
{{- define "tfstack.trainer.replicatedJob" -}}worker{{- end -}}
{{/* The JobSet's oracle (groups > 1): one child Job "<jobset>-oracle-0" of one pod. */}}
{{- define "tfstack.trainer.oracleReplicatedJob" -}}oracle{{- end -}}

{{/*
host:port of the oracle (groups > 1), as every worker reaches it and the oracle listens on it
(TFSTACK_ORACLE). The oracle's Job is Indexed with one completion, so its pod has the stable hostname
"<job>-0" (Kubernetes docs, Jobs, "Completion mode"):
- jobset: "<jobset>-oracle-0-0.<subdomain>" (jobset_types.go: pods are
  <jobSet.name>-<replicatedJob.name>-<job-index>-<pod-index>.<subdomain>);
- indexedJob: "<fullname>-oracle-0.<headless service>".
*/}}
{{- define "tfstack.trainer.oracleAddress" -}}
{{- $domain := printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- $name := include "tfstack.trainer.fullname" . -}}
{{- if eq (include "tfstack.trainer.mode" .) "jobset" -}}
{{- printf "%s-%s-0-0.%s.%s:%v" $name (include "tfstack.trainer.oracleReplicatedJob" .) $name $domain .Values.trainer.containerPorts.oracle -}}
{{- else -}}
{{- printf "%s-oracle-0.%s.%s:%v" $name (include "tfstack.trainer.serviceName" .) $domain .Values.trainer.containerPorts.oracle -}}
{{- end -}}
{{- end -}}
{{- define "tfstack.trainer.serviceName" -}}
{{- printf "%s-trainer-workers" (include "tfstack.fullname" .) -}}
{{- end -}}
{{- define "tfstack.serving.fullname" -}}
{{- printf "%s-serving" (include "tfstack.fullname" .) -}}
{{- end -}}
{{- define "tfstack.storage.claimName" -}}
{{- if eq .Values.storage.mode "existingClaim" -}}
{{- .Values.storage.existingClaim -}}
{{- else -}}
{{- printf "%s-models" (include "tfstack.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Image reference. Call with (dict "image" .Values.serving.image "context" $). A digest wins over the tag. */}}
{{- define "tfstack.image" -}}
{{- $repository := .image.repository -}}
{{- if .image.registry -}}
{{- $repository = printf "%s/%s" .image.registry .image.repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default .context.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Checkov annotations that skip checks which do not apply, each with its reason (rendered into the
metadata of every workload, so the justification travels with the manifest).
Call with (dict "probeSkips" true) for the helm test pod, which runs no server to probe.
*/}}
{{- define "tfstack.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=Images are referenced by tag by default; set image.digest to pin a digest.
checkov.io/skip2: CKV_K8S_15=IfNotPresent lets kind/minikube use locally loaded images; tags are immutable releases.
{{- if .probeSkips }}
checkov.io/skip3: CKV_K8S_8=The helm test pod runs one client call and exits; there is no server to probe.
checkov.io/skip4: CKV_K8S_9=The helm test pod runs one client call and exits; there is no server to probe.
{{- end }}
{{- end -}}

{{/*
The trainer's environment: the ONLY place that names TFSTACK_* variables. The trainer fails on a
TFSTACK_* name it does not know (trainer/config.py), and a test feeds this list to trainer.config.load.
Call with (dict "context" $ "mode" "jobset"|"indexedJob"|"tfjob" "role" "worker"|"oracle" "group" g), where
group is the indexedJob group (jobset: every pod reads its group from the job-index annotation JobSet
puts on it, jobset_types.go JobIndexKey "jobset.sigs.k8s.io/job-index", set by labelAndAnnotateObject
in jobset_controller.go on the child Job's pod template).
With trainer.groups = 1 there is no TFSTACK_ROLE/GROUPS/GROUP/ORACLE and no oracle (one group, as before).
The cluster variables describe pod i as <job>-<i>.<service>.<namespace>.svc.<clusterDomain>
(trainer.cluster.resolve). An Indexed Job's pod i has the hostname "<job>-<i>" (Kubernetes docs, Jobs,
"Completion mode": "the Pod hostname is set to $(job-name)-$(index)") under spec.subdomain:
- indexedJob: job = this chart's Job, service = the chart's headless Service (= the pods' subdomain);
- jobset: JobSet names its child Job "<jobset>-<replicatedJob>-<jobIndex>" (placement.GenJobName),
  sets the pods' subdomain to spec.network.subdomain (default: the JobSet's name) and creates a headless
  Service of that name when network.enableDNSHostnames is true (jobset_controller.go, GetSubdomain);
- tfjob: Kubeflow's operator sets TF_CONFIG, which the resolver reads first: no cluster variables.
With groups, JOB_NAME names the group's Job without its group: the resolver appends "-<TFSTACK_GROUP>"
(jobset: child Job "<jobset>-worker-<g>"; indexedJob: the chart's Job "<fullname>-<g>"). The oracle gets
no cluster variables (it joins no group).
*/}}
{{- define "tfstack.trainer.env" -}}
{{- $ := .context -}}
{{- $search := $.Values.trainer.search -}}
{{- $groups := int $.Values.trainer.groups -}}
{{- $role := .role | default "worker" -}}
- name: TFSTACK_MODEL_NAME
  value: {{ $.Values.model.name | quote }}
- name: TFSTACK_EXPORT_BASE
  value: {{ $.Values.storage.mountPath | quote }}
- name: TFSTACK_RUN_DIR
  value: {{ printf "%s/.runs" (trimSuffix "/" $.Values.storage.mountPath) | quote }}
{{- with $search.data }}
- name: TFSTACK_DATA
  value: {{ . | quote }}
{{- end }}
- name: TFSTACK_BACKBONE
  value: {{ $search.backbone | quote }}
- name: TFSTACK_WEIGHTS
  value: {{ $search.weights | quote }}
- name: TFSTACK_TUNER
  value: {{ $search.tuner | quote }}
- name: TFSTACK_MAX_TRIALS
  value: {{ $search.maxTrials | quote }}
- name: TFSTACK_EPOCHS
  value: {{ $search.epochs | quote }}
{{- with $search.batchSize }}
- name: TFSTACK_BATCH_SIZE
  value: {{ . | quote }}
{{- end }}
- name: TFSTACK_METRICS_PORT
  value: {{ $.Values.trainer.containerPorts.metrics | quote }}
- name: TFSTACK_TERMINATION_GRACE_SECONDS
  value: {{ include "tfstack.trainer.saveDeadline" $ | quote }}
{{- if gt $groups 1 }}
- name: TFSTACK_ROLE
  value: {{ $role | quote }}
- name: TFSTACK_GROUPS
  value: {{ $groups | quote }}
{{- if eq $role "worker" }}
- name: TFSTACK_GROUP
{{- if eq .mode "jobset" }}
  valueFrom:
    fieldRef:
      fieldPath: metadata.annotations['jobset.sigs.k8s.io/job-index']
{{- else }}
  value: {{ .group | quote }}
{{- end }}
{{- end }}
- name: TFSTACK_ORACLE
  value: {{ include "tfstack.trainer.oracleAddress" $ | quote }}
{{- end }}
{{- if and (ne .mode "tfjob") (eq $role "worker") }}
- name: TFSTACK_CLUSTER_WORKERS
  value: {{ $.Values.trainer.workers | quote }}
{{- if and (eq .mode "jobset") (gt $groups 1) }}
- name: TFSTACK_CLUSTER_JOB_NAME
  value: {{ printf "%s-%s" (include "tfstack.trainer.fullname" $) (include "tfstack.trainer.replicatedJob" $) | quote }}
- name: TFSTACK_CLUSTER_SERVICE
  value: {{ include "tfstack.trainer.fullname" $ | quote }}
{{- else if eq .mode "jobset" }}
- name: TFSTACK_CLUSTER_JOB_NAME
  value: {{ printf "%s-%s-0" (include "tfstack.trainer.fullname" $) (include "tfstack.trainer.replicatedJob" $) | quote }}
- name: TFSTACK_CLUSTER_SERVICE
  value: {{ include "tfstack.trainer.fullname" $ | quote }}
{{- else }}
- name: TFSTACK_CLUSTER_JOB_NAME
  value: {{ include "tfstack.trainer.fullname" $ | quote }}
- name: TFSTACK_CLUSTER_SERVICE
  value: {{ include "tfstack.trainer.serviceName" $ | quote }}
{{- end }}
- name: TFSTACK_CLUSTER_PORT
  value: {{ $.Values.trainer.containerPorts.cluster | quote }}
- name: TFSTACK_CLUSTER_DOMAIN
  value: {{ printf "%s.svc.%s" $.Release.Namespace $.Values.clusterDomain | quote }}
{{- end }}
{{- with $.Values.trainer.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The trainer pod template (metadata and spec) shared by the JobSet, the Indexed Job and the TFJob.
Call with (dict "context" $ "mode" "jobset"|"indexedJob"|"tfjob" "role" "worker"|"oracle" "group" g), as
tfstack.trainer.env. Only version-independent labels (tfstack.stableLabels) and no checksum annotation: the
template is immutable once the Job exists. The oracle (groups > 1) runs the same image and command with
TFSTACK_ROLE=oracle, listens on the oracle port instead of the cluster port, requests no GPU and has its
own resources and placement (trainer.oracle); it keeps the workers' priority class and scheduler (a gang
scheduler must see every pod of the search).
*/}}
{{- define "tfstack.trainer.podTemplate" -}}
{{- $ := .context -}}
{{- $t := $.Values.trainer -}}
metadata:
  labels:
    {{- include "tfstack.stableLabels" (dict "context" $ "component" "trainer" "podLabels" $t.podLabels) | nindent 4 }}
  {{- $annotations := deepCopy ($t.podAnnotations | default dict) }}
  {{- if $t.volcano.enabled }}
  {{- /* Volcano gangs pods that name an existing PodGroup (its podgroup controller makes one per pod otherwise). */}}
  {{- $_ := set $annotations "scheduling.k8s.io/group-name" (include "tfstack.trainer.podGroupName" $) }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- include "tfstack.trainer.podSpec" . | nindent 2 }}
{{- end -}}

{{- define "tfstack.trainer.podSpec" -}}
{{- $ := .context -}}
{{- $t := $.Values.trainer -}}
{{- $oracle := eq (.role | default "worker") "oracle" -}}
automountServiceAccountToken: false
{{- /* One value: the kubelet's SIGKILL deadline, and (less the margin) the trainer's save deadline. */}}
terminationGracePeriodSeconds: {{ int $t.terminationGracePeriodSeconds }}
{{- if eq .mode "tfjob" }}
restartPolicy: OnFailure
{{- else }}
{{- /* podFailurePolicy requires restartPolicy Never (Kubernetes API reference, JobSpec.podFailurePolicy). */}}
restartPolicy: Never
{{- end }}
{{- if eq .mode "indexedJob" }}
subdomain: {{ include "tfstack.trainer.serviceName" $ }}
{{- end }}
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $t.podSecurityContext | nindent 2 }}
{{- $scheduler := ternary ($t.schedulerName | default "volcano") $t.schedulerName $t.volcano.enabled }}
{{- if $oracle }}
{{- include "tfstack.scheduling" (merge (dict "priorityClassName" $t.priorityClassName "schedulerName" $scheduler) $t.oracle) }}
{{- else }}
{{- include "tfstack.scheduling" (merge (dict "schedulerName" $scheduler) (omit $t "schedulerName")) }}
{{- end }}
{{- /*
Keras looks for (and downloads) ImageNet weights under KERAS_HOME (/opt/keras in the image) only while
that directory is writable, else under /tmp/.keras. With a read-only root filesystem the weights baked
into the image (BAKE_WEIGHTS) are copied into a writable emptyDir mounted over /opt/keras.
*/}}
initContainers:
  - name: keras-cache
    image: {{ include "tfstack.image" (dict "image" $t.image "context" $) }}
    imagePullPolicy: {{ $t.image.pullPolicy }}
    command: ["sh", "-c", "cp -R /opt/keras/. /keras-cache/"]
    securityContext:
      {{- toYaml $t.containerSecurityContext | nindent 6 }}
    resources:
      requests:
        cpu: 100m
        memory: 128Mi
      limits:
        cpu: 500m
        memory: 256Mi
    volumeMounts:
      - name: keras
        mountPath: /keras-cache
containers:
  {{- /* Kubeflow's TFJob operator requires the container to be named "tensorflow". */}}
  - name: tensorflow
    image: {{ include "tfstack.image" (dict "image" $t.image "context" $) }}
    imagePullPolicy: {{ $t.image.pullPolicy }}
    args: ["search"]
    env:
      {{- include "tfstack.trainer.env" . | nindent 6 }}
    ports:
      {{- if $oracle }}
      - name: oracle
        containerPort: {{ $t.containerPorts.oracle }}
        protocol: TCP
      {{- else }}
      - name: {{ ternary "tfjob-port" "cluster" (eq .mode "tfjob") }}
        containerPort: {{ $t.containerPorts.cluster }}
        protocol: TCP
      {{- end }}
      - name: metrics
        containerPort: {{ $t.containerPorts.metrics }}
        protocol: TCP
    securityContext:
      {{- toYaml $t.containerSecurityContext | nindent 6 }}
    resources:
      {{- $resources := deepCopy (ternary $t.oracle.resources $t.resources $oracle) -}}
      {{- if and (gt (int $t.gpusPerWorker) 0) (not $oracle) -}}
      {{- $limits := merge (dict $t.gpuResourceName (int $t.gpusPerWorker)) ($resources.limits | default dict) -}}
      {{- $_ := set $resources "limits" $limits -}}
      {{- end }}
      {{- toYaml $resources | nindent 6 }}
    volumeMounts:
      - name: models
        mountPath: {{ $.Values.storage.mountPath }}
      - name: tmp
        mountPath: /tmp
      - name: dshm
        mountPath: /dev/shm
      - name: keras
        mountPath: /opt/keras
      {{- if $t.dataVolume.existingClaim }}
      - name: data
        mountPath: {{ $t.dataVolume.mountPath }}
        readOnly: true
      {{- end }}
volumes:
  - name: models
    persistentVolumeClaim:
      claimName: {{ include "tfstack.storage.claimName" $ }}
  - name: tmp
    emptyDir: {}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $t.sharedMemorySize }}
  - name: keras
    emptyDir: {}
  {{- if $t.dataVolume.existingClaim }}
  - name: data
    persistentVolumeClaim:
      claimName: {{ $t.dataVolume.existingClaim }}
      readOnly: true
  {{- end }}
{{- end -}}

{{/*
A child Job of the JobSet: Indexed (so each pod has the hostname "<job>-<index>"), failed by its first
failed pod (backoffLimit 0, the JobSet decides what restarts), at once with reason PodFailurePolicy on the
trainer's do-not-retry exits. Call with (dict "context" $ "role" "worker"|"oracle" "completions" n).
*/}}
{{- define "tfstack.trainer.jobsetJobSpec" -}}
{{- $ := .context -}}
{{- $t := $.Values.trainer -}}
{{- $codes := include "tfstack.trainer.exitCodes" $ | fromYaml -}}
spec:
  completionMode: Indexed
  completions: {{ .completions }}
  parallelism: {{ .completions }}
  # The first failed pod fails the child Job; the JobSet's failure policy decides what restarts.
  backoffLimit: 0
  podFailurePolicy:
    rules:
      # A drain, preemption or eviction (the pod carries DisruptionTarget): fail the child Job at once with
      # the message "Pod NS/P has condition DisruptionTarget matching FailJob rule at index 0", which the
      # JobSet's first rule restarts outside maxRestarts. First, so that whatever a disrupted trainer exits
      # with, the disruption decides.
      - action: FailJob
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
      # Bad input or configuration, or a model the publish gate refused: fail the JobSet.
      - action: FailJob
        onExitCodes:
          containerName: tensorflow
          operator: In
          values: [{{ $codes.badInput }}, {{ $codes.notPublished }}]
  {{- if not (kindIs "invalid" $t.activeDeadlineSeconds) }}
  # Per attempt: a child Job past its deadline fails with DeadlineExceeded, which fails the JobSet.
  activeDeadlineSeconds: {{ $t.activeDeadlineSeconds }}
  {{- end }}
  template:
    {{- include "tfstack.trainer.podTemplate" (dict "context" $ "mode" "jobset" "role" .role) | nindent 4 }}
{{- end -}}

{{/*
An Indexed Job of the indexedJob mode: one group's workers, or the oracle (trainer-job.yaml,
trainer-oracle-job.yaml). Call with (dict "context" $ "name" name "role" "worker"|"oracle" "group" g
"completions" n).
*/}}
{{- define "tfstack.trainer.indexedJob" -}}
{{- $ := .context -}}
{{- $t := $.Values.trainer -}}
{{- $codes := include "tfstack.trainer.exitCodes" $ | fromYaml -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .name }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "tfstack.labels" (dict "context" $ "component" "trainer") | nindent 4 }}
    {{- include "tfstack.trainer.kueueLabels" $ | nindent 4 }}
  annotations:
    {{- include "tfstack.checkovSkips" (dict "probeSkips" false) | nindent 4 }}
spec:
  completionMode: Indexed
  completions: {{ .completions }}
  parallelism: {{ .completions }}
  # Retries are counted per index; once one index has used up its retries the whole job fails:
  # synchronous training needs every rank.
  backoffLimitPerIndex: {{ $t.backoffLimitPerIndex }}
  maxFailedIndexes: 0
  podFailurePolicy:
    rules:
      # Bad input or configuration, or a model the publish gate refused: a retry cannot fix it.
      - action: FailJob
        onExitCodes:
          containerName: tensorflow
          operator: In
          values: [{{ $codes.badInput }}, {{ $codes.notPublished }}]
      # A peer was lost or the group could not form: this pod is recreated with the others (a group
      # restart) without using a retry; the pod that failed first counts.
      - action: Ignore
        onExitCodes:
          containerName: tensorflow
          operator: In
          values: [{{ $codes.peerLost }}]
      # Evictions, preemptions and node drains are not the trainer's fault: recreate without counting.
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
  activeDeadlineSeconds: {{ $t.activeDeadlineSeconds | default $t.indexedJobDeadlineSeconds }}
  {{- if not (kindIs "invalid" $t.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ $t.ttlSecondsAfterFinished }}
  {{- end }}
  template:
    {{- include "tfstack.trainer.podTemplate" (dict "context" $ "mode" "indexedJob" "role" .role "group" .group) | nindent 4 }}
{{- end -}}

{{/* TF Serving's metrics path, read from files/monitoring.config (the one place it is set). */}}
{{- define "tfstack.serving.metricsPath" -}}
{{- regexFind "path: *\"[^\"]+\"" (.Files.Get "files/monitoring.config") | trimPrefix "path:" | trim | trimAll "\"" -}}
{{- end -}}


{{/*
TF Serving's placement (a dict for tfstack.scheduling): serving.* as given, and with serving.spreadReplicas
the soft defaults where serving.affinity / serving.topologySpreadConstraints are empty: prefer another node
than the other replicas (preferred pod anti-affinity on kubernetes.io/hostname) and spread over zones with
ScheduleAnyway. Both are preferences: a one-node cluster still schedules every replica.
*/}}
{{- define "tfstack.serving.scheduling" -}}
{{- $s := deepCopy .Values.serving -}}
{{- $selector := include "tfstack.selectorLabels" (dict "context" . "component" "serving") | fromYaml -}}
{{- if and $s.spreadReplicas (not $s.affinity) -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" $selector) -}}
{{- $_ := set $s "affinity" (dict "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term)))) -}}
{{- end -}}
{{- if and $s.spreadReplicas (not $s.topologySpreadConstraints) -}}
{{- $_ := set $s "topologySpreadConstraints" (list (dict "maxSkew" 1 "topologyKey" "topology.kubernetes.io/zone" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" (dict "matchLabels" $selector))) -}}
{{- end -}}
{{- pick $s "priorityClassName" "schedulerName" "runtimeClassName" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" | toYaml -}}
{{- end -}}

{{/*
Refuse a ReadWriteOnce claim that pods on different nodes would mount: a ReadWriteOnce volume attaches to
one node, and every further pod elsewhere waits in ContainerCreating (Multi-Attach error) forever. Mounted
by several pods: the trainer with more than one pod (workers x groups, plus the oracle), serving with more
than one replica (or an autoscaler), or both components at once. Only the access modes the chart creates are
known (storage.mode pvc); an existing claim's modes are not visible at render time.
*/}}
{{- define "tfstack.storage.checkSharedClaim" -}}
{{- $v := .Values -}}
{{- if and (eq $v.storage.mode "pvc") (not (has "ReadWriteMany" $v.storage.accessModes)) -}}
{{- $pods := 0 -}}
{{- $who := list -}}
{{- if $v.trainer.enabled -}}
{{- $trainerPods := mul (int $v.trainer.workers) (int $v.trainer.groups) -}}
{{- if gt (int $v.trainer.groups) 1 }}{{ $trainerPods = add1 $trainerPods }}{{ end -}}
{{- $pods = add $pods $trainerPods -}}
{{- $who = append $who (printf "%d trainer pod(s)" $trainerPods) -}}
{{- end -}}
{{- if $v.serving.enabled -}}
{{- $replicas := ternary (int $v.serving.autoscaling.maxReplicas) (int $v.serving.replicaCount) $v.serving.autoscaling.enabled -}}
{{- $pods = add $pods $replicas -}}
{{- $who = append $who (printf "up to %d serving replica(s)" $replicas) -}}
{{- end -}}
{{- if $v.tensorboard.enabled -}}
{{- $pods = add1 $pods -}}
{{- $who = append $who "TensorBoard" -}}
{{- end -}}
{{- if gt $pods 1 -}}
{{- fail (printf "storage.accessModes %v cannot be shared: %s would mount the claim, on different nodes, and a %s volume attaches to one node only (every pod after the first waits in ContainerCreating with a Multi-Attach error). Use storage.accessModes [ReadWriteMany] with a StorageClass that offers it (NFS, CephFS, Filestore, EFS, Azure Files), or storage.mode existingClaim with such a claim; TF Serving only reads (ReadOnlyMany suffices for a serving-only release of an existing claim)." $v.storage.accessModes (join " and " $who) (first $v.storage.accessModes)) -}}
{{- end -}}
{{- end -}}
{{- end -}}


{{/*
Kueue's labels on the trainer's workload object (never on the pod templates): the LocalQueue and the
WorkloadPriorityClass. A JobSet is one Kueue workload with one pod set per replicatedJob, admitted whole;
Indexed Jobs with groups would be G+1 workloads that Kueue could admit in part (some groups waiting on
quota while the oracle runs), so that combination is refused.
*/}}
{{- define "tfstack.trainer.kueueLabels" -}}
{{- $t := .Values.trainer -}}
{{- if and $t.queueName (gt (int $t.groups) 1) (eq (include "tfstack.trainer.mode" .) "indexedJob") -}}
{{- fail (printf "trainer.queueName with trainer.groups=%v and trainer.mode=indexedJob would make %v Kueue workloads that can be admitted in part; use trainer.mode=jobset (one workload, admitted whole)." $t.groups (add1 (int $t.groups))) -}}
{{- end -}}
{{- with $t.queueName }}
kueue.x-k8s.io/queue-name: {{ . }}
{{- end }}
{{- with $t.kueuePriorityClass }}
kueue.x-k8s.io/priority-class: {{ . }}
{{- end }}
{{- end -}}

{{/* The Volcano PodGroup of the search (trainer.volcano.enabled). */}}
{{- define "tfstack.trainer.podGroupName" -}}
{{- include "tfstack.trainer.fullname" . -}}
{{- end -}}
