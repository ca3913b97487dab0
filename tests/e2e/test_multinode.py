"""A real 2-worker pretrain on a simulated two-node Ray cluster: one worker per node.

`ray.cluster_utils.Cluster` starts a head node and a second node in this machine,
each with one CPU, so a 2-worker job with one CPU per worker can only run with
one worker on each node. Where the workers ran is read back from Ray's state
API (the node id of each `RayTrainWorker` actor), not from log text: nodes of
such a cluster all report the same IP, but their node ids differ.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.helpers import free_port, run_tiny, step_metrics

pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster(tiny_dataset, monkeypatch):
    """A head node and a worker node, one CPU each, with this process's driver connected.

    Requests `tiny_dataset` first: the dataset is prepared on the tests' local Ray,
    whose start also turns on Ray's default token authentication in this process
    (RAY_AUTH_MODE=token, the token in ~/.ray/auth_token) unless RAY_AUTH_MODE says
    otherwise. The nodes started here inherit that, so this cluster requires the token.
    """
    import ray
    from ray.cluster_utils import Cluster

    # The state API prefers these over the address it is given; the cluster must be this one.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    # Cluster records its head in <temp>/ray/ray_current_cluster, where address-less Ray
    # clients on the machine look (other Rays' Train placement-group cleaners among them):
    # a private temp dir keeps this cluster to this test. Kept short for socket paths.
    private_tmp = tempfile.mkdtemp(prefix="ray-mn-")
    monkeypatch.setenv("RAY_TMPDIR", private_tmp)
    ray.shutdown()  # the tests' in-process local Ray would compete for the 2 CPUs
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            # The state API is served by the dashboard; keep it on loopback.
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
        },
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # Ray Train's PlacementGroupCleaner asks the state API whether the controller still
        # lives, at RAY_ADDRESS or else the machine's last-started cluster, and removes the
        # run's placement group when the answer is "no such actor": name this cluster to it.
        ray.init(address=cluster.address, runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}})
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # later tests start their own private local Ray
        shutil.rmtree(private_tmp, ignore_errors=True)


def test_two_workers_train_on_two_nodes(two_node_cluster, tiny_dataset, tmp_path):
    import ray
    from ray.util.state import list_actors

    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    assert ray.cluster_resources().get("CPU") == 2

    final = run_tiny(
        tiny_dataset,
        tmp_path,
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--run.name=two-nodes",
        "--scaling.num_workers=2",
        "--scaling.cpus_per_worker=1",
        "--scaling.placement_strategy=SPREAD",
        "--train.grad_accum_steps=1",  # the recipe's global batch of 8 sequences with 2 workers
    )

    # It trained: every step recorded once, loss down, a final eval and checkpoint.
    losses = step_metrics(tmp_path / "two-nodes")
    assert sorted(losses) == list(range(1, 21))
    first, last_five = losses[1], [losses[s] for s in range(16, 21)]
    assert max(last_five) < 0.85 * first, f"loss did not fall: step 1 {first:.3f}, steps 16-20 {last_five}"
    assert final["step"] == 20 and final["eval/bpb"] > 0 and final["checkpoint"]

    # Where it ran: the run's two training workers, each on its own node of this cluster.
    # This cluster is fresh, so every RayTrainWorker in it belongs to this run.
    workers = list_actors(
        address=two_node_cluster.address,
        filters=[("class_name", "=", "RayTrainWorker")],
        detail=True,
        raise_on_missing_output=False,
    )
    assert len(workers) == 2, [(w.actor_id, w.state, w.node_id) for w in workers]
    worker_nodes = {w.node_id for w in workers}
    assert len(worker_nodes) == 2 and worker_nodes == nodes, f"workers' nodes {worker_nodes}, cluster {nodes}"

    # The placement strategy given on the command line is the one Ray Train asked for.
    groups = ray.util.placement_group_table().values()
    assert [g["strategy"] for g in groups] == ["SPREAD"], list(groups)
