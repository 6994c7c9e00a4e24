"""A real Apache Kafka broker (KRaft combined mode) from Maven Central jars, no systemd.

The jars are resolved once by Maven (``deploy/local/kafka/pom.xml``, one pinned Kafka
version) into ``<dir>/lib`` and reused while the pom is unchanged.  One JVM is broker and
controller; its storage is formatted with a fresh cluster id on first start.  The
settings suit one local node and fast tests: replication 1 everywhere (so transactions
work), no initial rebalance delay, a small heap.  ``stack.py`` runs the shared broker with
it and tests run throwaway ones (``tests/kafka_broker.py``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
MAIN_CLASS = "kafka.Kafka"  # also how stack.py recognises our process in /proc/PID/cmdline
HEAP = "512m"
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


class BrokerSetupError(Exception):
    """Jars could not be resolved or storage not formatted; the message names the log."""


def version() -> str:
    """The Kafka version the pom pins."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if match is None:
        raise BrokerSetupError(f"no <kafka.version> in {POM}")
    return match.group(1).strip()


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_ready(lib: Path) -> bool:
    stamp = lib / ".pom-sha256"
    return stamp.is_file() and stamp.read_text().strip() == _pom_digest()


def ensure_jars(lib: Path, log: Path) -> Path:
    """Resolve the broker's runtime jars into ``lib`` once (Maven); reuse them after."""
    if jars_ready(lib):
        return lib
    mvn = shutil.which("mvn", path=_SBIN)
    if mvn is None:
        raise BrokerSetupError("kafka: mvn not found (apt-get install maven)")
    staging = lib.with_name(lib.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]  # fmt: skip
    with log.open("ab") as out:
        out.write(f"resolving Kafka {version()} jars: {' '.join(cmd)}\n".encode())
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=900)
    if done.returncode or not any(staging.glob("kafka_2.13-*.jar")):
        raise BrokerSetupError(f"kafka: Maven could not resolve the broker jars, see {log}")
    (staging / ".pom-sha256").write_text(_pom_digest() + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)  # complete or absent: an interrupted resolve is redone
    return lib


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's Uuid)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def server_properties(bind: str, port: int, advertised: str, data: Path) -> str:
    """One node that is broker and controller; the controller listens on ``port + 1``."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{bind}:{port + 1}",
        "listeners": f"PLAINTEXT://{bind}:{port},CONTROLLER://{bind}:{port + 1}",
        "advertised.listeners": f"PLAINTEXT://{advertised}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",  # 50 by default: slow first group on 2 cores
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",  # no 3 s wait for the first group member
        "group.min.session.timeout.ms": "6000",  # Kafka's default floor, stated for the docs
        "auto.create.topics.enable": "false",  # as in production: topics are created on purpose
        "delete.topic.enable": "true",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 << 20),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "2",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


def write_config(conf: Path, bind: str, port: int, advertised: str, data: Path) -> Path:
    """The broker's properties at ``conf`` and its log4j2 config beside it."""
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.with_name("log4j2.properties").write_text(LOG4J2)
    conf.write_text(server_properties(bind, port, advertised, data))
    return conf


def _java() -> str:
    java = shutil.which("java", path=_SBIN)
    if java is None:
        raise BrokerSetupError("kafka: java not found (apt-get install default-jre-headless)")
    return java


def _jvm(lib: Path, conf: Path, heap: str) -> list[str]:
    return [
        _java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={conf.with_name('log4j2.properties')}",
        f"-Dkafka.logs.dir={conf.parent}", "-cp", f"{lib}/*",
    ]  # fmt: skip


def formatted(data: Path) -> bool:
    return (data / "meta.properties").is_file()


def format_storage(lib: Path, conf: Path, data: Path, log: Path) -> str:
    """Format ``data`` with a new cluster id (first start only); returns the id."""
    cid = cluster_id()
    cmd = [*_jvm(lib, conf, "256m"), "kafka.tools.StorageTool", "format", f"--cluster-id={cid}",
           "-c", str(conf), "--ignore-formatted"]  # fmt: skip
    with log.open("ab") as out:
        done = subprocess.run(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=120)
    if done.returncode or not formatted(data):
        raise BrokerSetupError(f"kafka: formatting {data} failed, see {log}")
    return cid


def command(lib: Path, conf: Path, heap: str = HEAP) -> list[str]:
    """The foreground command line of the broker."""
    return [*_jvm(lib, conf, heap), MAIN_CLASS, str(conf)]
