"""Cluster definitions: Ray autoscaler configs, KubeRay manifests, NCCL presets.

Nothing here starts Ray or reaches a cloud. Each file goes through the checks
its real consumer runs first: Ray's schema and validator (`ray up`), Ray's
runtime-env parsing (`ray job submit --runtime-env`), and for the Kubernetes
manifests the fields KubeRay needs and the numbers that must agree.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
from ray.runtime_env import RuntimeEnv

from orchestrator.launch.fabric import list_presets, load_nccl_preset
from tests.helpers import REPO
from workloads.errors import UserInputError

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
NCCL = CLUSTER / "nccl"
PACKAGE_PRESETS = REPO / "orchestrator" / "launch" / "nccl_presets"

# Ray autoscaler configs sit directly in cluster/; the subfolders hold the rest.
AUTOSCALER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
AWS_CONFIG = CLUSTER / "aws-gpu-efa.yaml"

# What each fabric preset cannot do without; None: present, any value.
REQUIRED_PRESET_VARS = {
    "infiniband": {"NCCL_NET": "IB", "NCCL_IB_HCA": None, "NCCL_SOCKET_IFNAME": None},
    "roce": {"NCCL_NET": "IB", "NCCL_IB_HCA": None, "NCCL_IB_GID_INDEX": None},
    "efa": {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1"},
    "tcp": {"NCCL_IB_DISABLE": "1", "NCCL_NET": "Socket"},
    "debug": {"NCCL_DEBUG": "INFO"},
}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _validate_autoscaler_config(config: dict) -> None:
    """What `ray up` checks before it calls the cloud: the schema Ray ships,
    then Ray's own validator on the config merged with the provider defaults."""
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))


def _kuberay_documents() -> dict[str, dict]:
    documents = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            documents[document["kind"]] = document
    return documents


def _pod_templates(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def test_every_yaml_under_cluster_is_checked():
    checked = {*AUTOSCALER_CONFIGS, *KUBERAY.glob("*.yaml"), *NCCL.glob("*.yaml")}
    found = set(CLUSTER.rglob("*.yaml")) | set(CLUSTER.rglob("*.yml"))
    assert found == checked, f"not covered by any test: {sorted(map(str, found - checked))}"
    assert AWS_CONFIG in AUTOSCALER_CONFIGS


# --- Ray autoscaler configs -------------------------------------------------


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=lambda p: p.name)
def test_autoscaler_config_validates(path):
    _validate_autoscaler_config(_load(path))


def _drop_provider(config):
    del config["provider"]


def _misspell_setup_commands(config):
    config["setup_command"] = config.pop("setup_commands")


def _gpu_count_as_string(config):
    config["available_node_types"]["gpu-efa"]["resources"]["GPU"] = "8"


def _unknown_head_node_type(config):
    config["head_node_type"] = "no-such-type"


def _min_workers_above_max(config):
    config["available_node_types"]["gpu-efa"]["min_workers"] = config["max_workers"] + 1


@pytest.mark.parametrize(
    "break_config",
    [_drop_provider, _misspell_setup_commands, _gpu_count_as_string, _unknown_head_node_type, _min_workers_above_max],
)
def test_broken_autoscaler_config_fails_validation(break_config):
    config = _load(AWS_CONFIG)
    break_config(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _validate_autoscaler_config(config)


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=lambda p: p.name)
def test_autoscaler_config_keeps_token_auth_and_a_local_dashboard(path):
    config = _load(path)
    assert "RAY_AUTH_MODE=disabled" not in path.read_text(encoding="utf-8")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    # Every node gets the token `ray get-auth-token --generate` wrote locally.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("path", AUTOSCALER_CONFIGS, ids=lambda p: p.name)
def test_autoscaler_config_installs_the_synced_project(path):
    config = _load(path)
    synced = [node_path for node_path, local in config["file_mounts"].items() if local == "."]
    assert len(synced) == 1, "the repository root must be synced to the nodes exactly once"
    setup = config["setup_commands"]
    assert f"pip install -e {synced[0]}" in setup

    pyproject = pytest.importorskip("tomllib").loads((REPO / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    torch_range = next(SpecifierSet(d[len("torch") :]) for d in dependencies if re.match(r"torch\s*[<>=!~]", d))
    pins = [m.group(1) for command in setup for m in [re.fullmatch(r"pip install torch==(\S+)", command)] if m]
    assert len(pins) == 1 and pins[0] in torch_range, f"torch pin {pins} outside the project's range {torch_range}"


def test_aws_config_has_a_cpu_head_and_8_gpu_workers():
    config = _load(AWS_CONFIG)
    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = node_types["gpu-efa"]
    assert gpu["resources"]["GPU"] == 8
    assert 0 < gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    interfaces = gpu["node_config"]["NetworkInterfaces"]
    assert all(interface["InterfaceType"] == "efa" for interface in interfaces)
    assert sorted(interface["NetworkCardIndex"] for interface in interfaces) == list(range(len(interfaces)))


# --- KubeRay manifests -------------------------------------------------------


def test_kuberay_manifests_carry_the_required_fields():
    documents = _kuberay_documents()
    assert set(documents) == {"RayCluster", "RayJob", "PersistentVolumeClaim"}
    for kind in ("RayCluster", "RayJob"):
        assert documents[kind]["apiVersion"] == "ray.io/v1"
        assert documents[kind]["metadata"]["name"]

    spec = documents["RayCluster"]["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert isinstance(spec["headGroupSpec"]["rayStartParams"], dict)
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] > 0
        # Extended resources must be requested exactly as limited.
        assert container["resources"]["requests"] == container["resources"]["limits"]
        assert any(name.startswith(("rdma/", "vpc.amazonaws.com/efa")) for name in container["resources"]["limits"])
        assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
        assert {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"} in container["env"]
        shm = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/dev/shm")
        shm_volume = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == shm["name"])
        assert shm_volume["emptyDir"]["medium"] == "Memory"


def test_rayjob_runs_pretrain_on_a_copy_of_the_raycluster():
    documents = _kuberay_documents()
    job = documents["RayJob"]["spec"]
    assert job["rayClusterSpec"] == documents["RayCluster"]["spec"], "rayjob.yaml drifted from raycluster.yaml"
    command = shlex.split(job["entrypoint"])
    assert command[:3] == ["python", "-m", "orchestrator.pretrain"]

    # The entrypoint's flags go through the real CLI parser (which imports
    # torch, hence here), and the config they make has to fit its pods.
    from orchestrator.stages.pretrain import PRETRAIN

    cfg = PRETRAIN.parse(command[3:])
    workers = job["rayClusterSpec"]["workerGroupSpecs"]
    limits = [group["template"]["spec"]["containers"][0]["resources"]["limits"] for group in workers]
    assert cfg.scaling.use_gpu
    assert cfg.scaling.num_workers == sum(g["replicas"] * lim["nvidia.com/gpu"] for g, lim in zip(workers, limits))
    for limit in limits:
        assert limit["nvidia.com/gpu"] * cfg.scaling.cpus_per_worker <= float(limit["cpu"])
    assert cfg.scaling.nccl_preset in list_presets()

    # run.output_dir lies on the shared claim in every pod, head included.
    claim = documents["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    claim_name = claim["metadata"]["name"]
    for pod in _pod_templates(job["rayClusterSpec"]):
        shared = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim") == {"claimName": claim_name}}
        mounts = [m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] in shared]
        assert any(cfg.run.output_dir.startswith(mount.rstrip("/") + "/") for mount in mounts)


def test_image_is_built_on_the_pinned_ray():
    dockerfile = (KUBERAY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-\S*gpu$", dockerfile, re.MULTILINE)


# --- NCCL presets -------------------------------------------------------------


def test_presets_are_the_expected_fabrics():
    assert list_presets() == sorted(REQUIRED_PRESET_VARS)


@pytest.mark.parametrize("name", sorted(REQUIRED_PRESET_VARS))
def test_preset_loads_with_required_vars(name):
    env = load_nccl_preset(name)
    assert env and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    for var, value in REQUIRED_PRESET_VARS[name].items():
        assert var in env, f"{name}: {var} missing"
        if value is not None:
            assert env[var] == value, f"{name}: {var}={env[var]!r}, expected {value!r}"
    # A failed collective must end the worker, not hang the job.
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


@pytest.mark.parametrize("path", sorted(NCCL.glob("*.yaml")), ids=lambda p: p.name)
def test_preset_file_is_a_runtime_env_for_ray_job_submit(path):
    # What `ray job submit --runtime-env <file>` does; Ray rejects non-str values.
    runtime_env = RuntimeEnv(**parse_runtime_env_args(runtime_env=str(path)))
    assert set(runtime_env) == {"env_vars"}
    assert load_nccl_preset(str(path)) == load_nccl_preset(path.stem)


def test_package_presets_are_identical_to_cluster_copies():
    package = {p.name: p.read_bytes() for p in PACKAGE_PRESETS.glob("*.yaml")}
    cluster = {p.name: p.read_bytes() for p in NCCL.glob("*.yaml")}
    assert sorted(package) == sorted(cluster)
    differing = [name for name in package if package[name] != cluster[name]]
    assert not differing, f"orchestrator/launch/nccl_presets and cluster/nccl differ in {differing}"


def test_unknown_preset_is_a_one_line_error_listing_the_presets():
    with pytest.raises(UserInputError) as error:
        load_nccl_preset("infiniband-hdr")
    message = str(error.value)
    assert "\n" not in message
    assert "'infiniband-hdr'" in message
    assert all(name in message for name in list_presets())


def test_missing_preset_file_is_a_one_line_error(tmp_path):
    with pytest.raises(UserInputError, match="does not exist") as error:
        load_nccl_preset(str(tmp_path / "site.yaml"))
    assert "\n" not in str(error.value)


def test_preset_file_numbers_become_strings(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("env_vars:\n  NCCL_IB_GID_INDEX: 3\n  NCCL_IB_TIMEOUT: 22\n")
    assert load_nccl_preset(str(path)) == {"NCCL_IB_GID_INDEX": "3", "NCCL_IB_TIMEOUT": "22"}


@pytest.mark.parametrize(
    "text",
    [
        "env_vars:\n  NCCL_IB_DISABLE: true\n",  # no single spelling NCCL agrees on
        "env_vars:\n  NCCL_IB_HCA:\n",  # null
        "env_vars:\n  NCCL_DEBUG: INFO\npip: [numpy]\n",  # would be dropped silently
        "NCCL_DEBUG: INFO\n",  # not a runtime env
        "env_vars: [unclosed\n",  # not YAML
    ],
)
def test_malformed_preset_file_is_a_one_line_error(tmp_path, text):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError) as error:
        load_nccl_preset(str(path))
    assert "\n" not in str(error.value)
    assert str(path) in str(error.value)
