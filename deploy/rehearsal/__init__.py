"""A CPU rehearsal of a Helm release: the chart's rendered RayCluster and RayJobs run as local Ray nodes.

No Kubernetes API server runs on a development machine or in CI, but Ray does, and several Ray nodes on
one host are an ordinary way to test multi-node Ray code. The rehearsal renders the chart, reads what
the rendered objects say (each group's `rayStartParams`, resources, environment and mounts, the
ConfigMap's files, the RayJobs' entrypoints and `backoffLimit`) and runs exactly that:

- `release.py`: `helm template` and the rendered objects, as the nodes and jobs to run;
- `cluster.py`: one local Ray node per pod (its own temp dir and ports), killed like a lost pod;
- `kuberay.py`: what the KubeRay operator does with the RayJobs (submit, resubmit up to backoffLimit,
  replace on upgrade);
- `deploy/rehearse.py`: the scenario (rounds, node faults, an upgrade) and its report.
"""
