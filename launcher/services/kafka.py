"""The local Apache Kafka: jars from Maven Central, KRaft nodes started as plain JVMs.

Each node is a combined broker+controller listening on 127.0.0.1. Ports are chosen by the
OS once and remembered in the state file, so a restarted broker comes back where its
clients expect it.

A secure cluster (`plan(..., secure=True)`) has no PLAINTEXT listener for clients: brokers
talk SASL_SSL (SCRAM-SHA-512) to clients and to each other, with a certificate from the local
CA (`tls.py`); the SCRAM users (`admin` for the brokers, `entitled` for the processes) are
written into the storage by `kafka-storage format --add-scram`, as KRaft wants. The same
listener also offers what managed services use instead (SCRAM-SHA-256: MSK, Aiven; PLAIN:
Confluent Cloud's API keys), and a second listener speaks SSL with client certificates
required (mutual TLS: MSK, Aiven), so each mechanism the settings accept can be tried for
real (`client_env(..., mechanism=)`, `mtls_env`).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from entitled.kafka import client_options
from entitled.settings import Settings
from launcher.services import _process as proc
from launcher.services import tls
from launcher.services.errors import ServicesError

KAFKA_VERSION = "4.1.1"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
# Two cores are shared by everything: keep the JVM small. A local broker (dev, tests) carries
# hundreds of events a second, not the throughput C2 and G1 are for: the client compiler
# alone and the serial collector start it with ~40 % less CPU (measured: 3.6-4.1 vs 6.1-6.4
# CPU-s to up and a topic), which the suite pays for every broker it starts.
JVM_OPTS = ("-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
START_TIMEOUT_S = 90.0

KafkaState = dict[str, Any]


def jar_dir(settings: Settings) -> Path:
    return settings.cache / f"kafka-{KAFKA_VERSION}"


def _libs(settings: Settings) -> Path:
    return jar_dir(settings) / "libs"


def _marker(settings: Settings) -> Path:
    return jar_dir(settings) / ".complete"


def jars_ready(settings: Settings) -> bool:
    return _marker(settings).exists() and any(_libs(settings).glob("kafka_2.13-*.jar"))


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServicesError(
            "`java` is not on PATH; Kafka needs Java 17 or newer. "
            "Install it with `apt-get install openjdk-17-jre-headless` (or run scripts/bootstrap)."
        )
    return java


def prepare(settings: Settings) -> Path:
    """Resolve the broker classpath into the cache (once); return the `libs` directory.

    The marker is written last, so an interrupted or failed download is redone next time.
    """
    _java()
    if jars_ready(settings):
        return _libs(settings)
    with proc.locked(settings.cache / f"kafka-{KAFKA_VERSION}.lock"):
        if jars_ready(settings):  # another process finished it while we waited
            return _libs(settings)
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServicesError(
                "`mvn` is not on PATH; it downloads the Kafka jars from Maven Central. "
                "Install it with `apt-get install maven` (or run scripts/bootstrap)."
            )
        root = jar_dir(settings)
        root.mkdir(parents=True, exist_ok=True)
        pom = root / "pom.xml"
        pom.write_bytes(resources.files("launcher.services").joinpath("kafka-pom.xml").read_bytes())
        partial = root / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            shutil.rmtree(partial, ignore_errors=True)
            out = (done.stdout + done.stderr).strip()[-3000:]
            raise ServicesError(
                f"Maven could not resolve the Kafka {KAFKA_VERSION} jars (exit {done.returncode}). "
                "Check that https://repo.maven.apache.org is reachable (or that ~/.m2/settings.xml "
                f"names a reachable mirror), then run `entitled services prepare` again.\n{out}"
            )
        shutil.rmtree(_libs(settings), ignore_errors=True)
        partial.rename(_libs(settings))
        _marker(settings).write_text(
            "\n".join(sorted(p.name for p in _libs(settings).glob("*.jar"))) + "\n"
        )
    return _libs(settings)


def _node_dir(settings: Settings, node_id: int) -> Path:
    return settings.services_dir.absolute() / "kafka" / f"node-{node_id}"


def _log_file(settings: Settings, node_id: int) -> Path:
    return settings.services_dir.absolute() / "logs" / f"kafka-{node_id}.log"


SCRAM = "SCRAM-SHA-512"
# What the SASL_SSL listener of a secure cluster accepts; processes use SCRAM unless told.
MECHANISMS = (SCRAM, "SCRAM-SHA-256", "PLAIN")
CLIENT_USER = "entitled"  # the processes' SCRAM user; `admin` is the brokers' own


def _listener_properties(node: dict[str, Any], security: dict[str, Any] | None) -> dict[str, Any]:
    controller = f"CONTROLLER://127.0.0.1:{node['controller_port']}"
    if security is None:
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{node['port']},{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node['port']}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
        }
    auth = tls.Authority(Path(security["tls_dir"]))
    users = security["users"]
    admin = users["admin"]
    plain_users = " ".join(f'user_{name}="{secret}"' for name, secret in users.items())
    listeners = [f"SASL_SSL://127.0.0.1:{node['port']}"]
    protocols = "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    mtls: dict[str, Any] = {}
    if node.get("mtls_port"):  # clusters planned before it have none
        listeners.append(f"SSL://127.0.0.1:{node['mtls_port']}")
        protocols = f"{protocols},SSL:SSL"
        mtls = {"listener.name.ssl.ssl.client.auth": "required"}
    return {
        "listeners": ",".join([*listeners, controller]),
        "advertised.listeners": ",".join(listeners),
        "listener.security.protocol.map": protocols,
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": ",".join(MECHANISMS),
        "sasl.mechanism.inter.broker.protocol": SCRAM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{admin}";'
        ),
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        # PLAIN checks the password against these user_<name> entries (the same passwords)
        "listener.name.sasl_ssl.plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(auth.bundle),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(auth.ca_file),
        "ssl.client.auth": "none",
        **mtls,
    }


def _server_properties(
    node: dict[str, Any], nodes: list[dict[str, Any]], security: dict[str, Any] | None = None
) -> str:
    n = len(nodes)
    rf = min(n, 3)
    voters = ",".join(f"{x['node_id']}@127.0.0.1:{x['controller_port']}" for x in nodes)
    props = {
        "node.id": node["node_id"],
        "process.roles": "broker,controller",
        **_listener_properties(node, security),
        "controller.listener.names": "CONTROLLER",
        "controller.quorum.voters": voters,
        "log.dirs": node["data_dir"],
        "num.partitions": 8,
        "default.replication.factor": rf,
        "min.insync.replicas": 2 if n >= 3 else 1,
        "offsets.topic.replication.factor": rf,
        # Fewer internal partitions: the first consumer group on a fresh broker is quicker.
        "offsets.topic.num.partitions": 8,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": 2 if n >= 3 else 1,
        "transaction.state.log.num.partitions": 8,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": 2 if n >= 3 else 1,
        "group.initial.rebalance.delay.ms": 0,
        # Consumers may ask for short sessions (a dead worker's partitions move within 3 s);
        # the stock floor is 6 s. Managed brokers: see docs/operations.md.
        "group.min.session.timeout.ms": 1000,
        "auto.create.topics.enable": "false",
        "num.network.threads": 2,
        "num.io.threads": 4,
        "log.retention.hours": -1,
        "log.retention.ms": -1,
        # The log cleaner looks for dirty compacted logs every second, not 15 s: the keys
        # topic's tombstones (erasure) are compacted away soon after their segment rolls.
        "log.cleaner.backoff.ms": 1000,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _log4j2(log_file: Path) -> str:
    return f"""\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.zk.name = org.apache.kafka.raft
logger.zk.level = WARN
"""


def plan(settings: Settings, brokers: int, *, secure: bool = False) -> KafkaState:
    """The nodes of a new cluster: ids, fresh ports, directories, and with `secure` the
    SCRAM users' passwords and where the TLS files go (nothing started yet)."""
    nodes = []
    for node_id in range(1, brokers + 1):
        home = _node_dir(settings, node_id)
        nodes.append(
            {
                "node_id": node_id,
                "port": proc.free_port(),
                "controller_port": proc.free_port(),
                "data_dir": str(home / "data"),
                "config": str(home / "server.properties"),
                "log4j": str(home / "log4j2.properties"),
                "log_file": str(_log_file(settings, node_id)),
                "pid": None,
            }
        )
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    state: KafkaState = {"version": KAFKA_VERSION, "cluster_id": cluster_id, "nodes": nodes}
    if secure:
        for node in nodes:
            node["mtls_port"] = proc.free_port()
        state["security"] = {
            "mechanism": SCRAM,
            "users": {"admin": tls.password(), CLIENT_USER: tls.password()},
            "tls_dir": str(settings.services_dir.absolute() / "tls"),
        }
    return state


def bootstrap(state: KafkaState) -> str:
    return ",".join(f"127.0.0.1:{n['port']}" for n in state["nodes"])


def client_env(
    state: KafkaState, user: str = CLIENT_USER, *, mechanism: str | None = None
) -> dict[str, str]:
    """The KAFKA_* variables a process needs to connect to this cluster as `user` (with
    `mechanism`, one of `MECHANISMS`, instead of the cluster's own SCRAM-SHA-512)."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap(state)}
    security = state.get("security")
    if security is None:
        return {**env, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    return {
        **env,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": mechanism or security["mechanism"],
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD": security["users"][user],
        "KAFKA_SSL_CA_FILE": str(tls.Authority(Path(security["tls_dir"])).ca_file),
    }


def mtls_env(state: KafkaState) -> dict[str, str]:
    """The KAFKA_* variables for the listener that requires a client certificate (mutual
    TLS, no SASL): the local CA's client certificate (made once)."""
    security = state.get("security")
    ports = [n.get("mtls_port") for n in state["nodes"]]
    if security is None or not all(ports):
        raise ServicesError(
            "This cluster has no mutual-TLS listener: start it with `entitled services up "
            "--secure` (after `entitled services down --wipe` if it was made before)."
        )
    auth = tls.client_certificate(tls.Authority(Path(security["tls_dir"])))
    return {
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(f"127.0.0.1:{p}" for p in ports),
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": str(auth.ca_file),
        "KAFKA_SSL_CERT_FILE": str(auth.client_cert_file),
        "KAFKA_SSL_KEY_FILE": str(auth.client_key_file),
    }


def client_settings(state: KafkaState, user: str = CLIENT_USER) -> Settings:
    """Settings that connect to this cluster as `user` (the project's own checks)."""
    return Settings.from_env(client_env(state, user))


def _classpath(settings: Settings) -> str:
    return f"{_libs(settings)}/*"


def _format(settings: Settings, state: KafkaState, nodes: list[dict[str, Any]]) -> None:
    """Format the storage of every node that has none, all at once (one short JVM each)."""
    todo = []
    for node in nodes:
        data = Path(node["data_dir"])
        if (data / "meta.properties").exists():
            continue
        proc.refuse_foreign(data, "Kafka")
        todo.append(node)
    # C1 only: the tool runs for a second or two, the optimising JIT would not pay off.
    java = [_java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", _classpath(settings)]
    running = []
    for node in todo:
        out = Path(node["config"]).parent / "format.log"
        # `--cluster-id=`: a urlsafe id may start with "-", which a separate argument would
        # be taken for an option.
        cmd = [
            *java,
            STORAGE_TOOL,
            "format",
            f"--cluster-id={state['cluster_id']}",
            "-c",
            node["config"],
            *_scram_users(state),
        ]
        with out.open("w") as fh:
            running.append((node, out, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)))
    failed = [(node, out, p.wait()) for node, out, p in running]
    for node, out, code in failed:
        if code != 0:
            raise ServicesError(
                f"Formatting the Kafka storage in {node['data_dir']} failed (exit {code}):\n"
                f"{proc.log_tail(out)}\nRun `entitled services down --wipe` and try again."
            )


def _scram_users(state: KafkaState) -> list[str]:
    """`--add-scram` arguments for the users of a secure cluster (KRaft keeps SCRAM
    credentials in its metadata log; the brokers' own must be there before they start)."""
    security = state.get("security")
    if security is None:
        return []
    args = []
    for user, secret in security["users"].items():
        args += ["--add-scram", f"{security['mechanism']}=[name={user},password={secret}]"]
    # the processes' user can also log in with SCRAM-SHA-256 (MSK's and Aiven's mechanism)
    secret = security["users"][CLIENT_USER]
    args += ["--add-scram", f"SCRAM-SHA-256=[name={CLIENT_USER},password={secret}]"]
    return args


def running(node: dict[str, Any]) -> bool:
    """The node's recorded pid is alive and is this node (not a pid reused after a reboot)."""
    pid = node.get("pid")
    return proc.pid_alive(pid) and node["config"] in proc.pid_cmdline(pid or 0)


def launch(settings: Settings, state: KafkaState) -> KafkaState:
    """Spawn every node of `state` that is not running (see `wait_ready`)."""
    prepare(settings)
    java = _java()
    stopped = [node for node in state["nodes"] if not running(node)]
    security = state.get("security")
    if security is not None and stopped:
        tls.authority(Path(security["tls_dir"]))
    for node in stopped:
        proc.require_free_port(node["port"], f"Kafka node {node['node_id']}")
        proc.require_free_port(node["controller_port"], f"Kafka controller {node['node_id']}")
        if node.get("mtls_port"):
            proc.require_free_port(node["mtls_port"], f"Kafka mutual-TLS {node['node_id']}")
        Path(node["data_dir"]).mkdir(parents=True, exist_ok=True)
        Path(node["log_file"]).parent.mkdir(parents=True, exist_ok=True)
        Path(node["config"]).write_text(_server_properties(node, state["nodes"], security))
        Path(node["config"]).chmod(0o600)  # it holds the brokers' SCRAM password
        Path(node["log4j"]).write_text(_log4j2(Path(node["log_file"])))
    _format(settings, state, stopped)
    for node in stopped:
        cmd = [
            java,
            *JVM_OPTS,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node['log4j']}",
            "-cp",
            _classpath(settings),
            MAIN_CLASS,
            node["config"],
        ]
        node["pid"] = proc.spawn_detached(cmd, Path(node["config"]).parent / "stdout.log")
    return state


def start(settings: Settings, state: KafkaState) -> KafkaState:
    """Start every node of `state` that is not running; wait until the cluster answers."""
    launch(settings, state)
    wait_ready(state)
    return state


def _node_failure(node: dict[str, Any], why: str) -> ServicesError:
    stdout = Path(node["config"]).parent / "stdout.log"
    return ServicesError(
        f"Kafka node {node['node_id']} (port {node['port']}) {why}.\n"
        f"--- {node['log_file']} ---\n{proc.log_tail(Path(node['log_file']))}\n"
        f"--- {stdout} ---\n{proc.log_tail(stdout, 20)}\n"
        "Fix the cause above, or run `entitled services down --wipe` and try again."
    )


async def _cluster_size(settings: Settings, timeout_s: float) -> int:
    admin = AIOKafkaAdminClient(
        **client_options(settings), request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    finally:
        await admin.close()


def wait_ready(state: KafkaState, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll until every node answers metadata naming all brokers, with a deadline."""
    deadline = time.monotonic() + timeout_s
    want = len(state["nodes"])
    admin = client_settings(state, "admin" if state.get("security") else CLIENT_USER)
    while True:
        for node in state["nodes"]:
            if not running(node):
                raise _node_failure(node, "exited during start-up")
        if all(proc.port_open(n["port"]) for n in state["nodes"]):
            try:
                if proc.run_async(lambda: _cluster_size(admin, 5.0)) >= want:
                    return
            except (KafkaError, OSError, TimeoutError):
                pass
        if time.monotonic() > deadline:
            raise _node_failure(state["nodes"][0], f"did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


def stop(state: KafkaState, *, kill: bool = False) -> None:
    """Stop every node by its pid (controlled shutdown unless `kill`); leaves no process."""
    for node in state.get("nodes", []):
        if running(node):
            proc.terminate(node["pid"], timeout=30.0, kill_first=kill)
        node["pid"] = None


def health(state: KafkaState) -> list[dict[str, Any]]:
    return [
        {
            "node_id": n["node_id"],
            "port": n["port"],
            "controller_port": n["controller_port"],
            "pid": n.get("pid") if running(n) else None,
            "data_dir": n["data_dir"],
            "log_file": n["log_file"],
            "healthy": running(n) and proc.port_open(n["port"]),
        }
        for n in state.get("nodes", [])
    ]
