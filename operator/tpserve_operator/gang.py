"""Labels and annotations that let gang schedulers admit a TP group all-or-nothing.

Every pod of group G carries `tpserve.io/pod-group: NAME-group-G`; with
`gangScheduling.kueueQueueName` also Kueue's plain-pod-group labels (`kueue.x-k8s.io/queue-name`,
`kueue.x-k8s.io/pod-group-name`) and its `pod-group-total-count` annotation; with
`gangScheduling.podGroupLabel` (e.g. `scheduling.x-k8s.io/pod-group` for the scheduler-plugins
coscheduling plugin) that label too, its value the group's PodGroup name.

Worker StatefulSets are per group, so their templates carry the values. The leaders of all groups
share one template, which cannot name its group: it lists the label keys in an annotation, and the
chart's MutatingAdmissionPolicy fills them in from the pod's `apps.kubernetes.io/pod-index` when
the pod is created. Gang schedulers read these labels at creation, so adding them later would be
too late.
"""

from __future__ import annotations

from .spec import ServiceSpec

LABEL_POD_GROUP = "tpserve.io/pod-group"
# The leader template's list of label keys the admission policy sets to the group's name.
ANNOTATION_GROUP_LABEL_KEYS = "tpserve.io/group-label-keys"
KUEUE_QUEUE_NAME = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_NAME = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_TOTAL_COUNT = "kueue.x-k8s.io/pod-group-total-count"


def pod_group_name(name: str, group: int) -> str:
    return f"{name}-group-{group}"


def group_label_keys(spec: ServiceSpec) -> list[str]:
    """Label keys whose value, on every pod of a group, is the group's name."""
    keys = [LABEL_POD_GROUP]
    if spec.kueue_queue_name:
        keys.append(KUEUE_POD_GROUP_NAME)
    if spec.pod_group_label:
        keys.append(spec.pod_group_label)
    return keys


def gang_metadata(spec: ServiceSpec, group: int | None) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) for the pod template of group `group`, or of the leaders (None)."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if spec.kueue_queue_name:
        labels[KUEUE_QUEUE_NAME] = spec.kueue_queue_name
        annotations[KUEUE_POD_GROUP_TOTAL_COUNT] = str(spec.nodes)
    if group is None:
        annotations[ANNOTATION_GROUP_LABEL_KEYS] = ",".join(group_label_keys(spec))
    else:
        labels |= dict.fromkeys(group_label_keys(spec), pod_group_name(spec.name, group))
    return labels, annotations
