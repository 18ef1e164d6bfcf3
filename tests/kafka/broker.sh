#!/usr/bin/env bash
# Runs a single-node Apache Kafka broker (KRaft: broker and controller in one
# process) on loopback, from the jars tests/kafka/pom.xml fetches.
#   tests/kafka/broker.sh DIR PORT [CONTROLLER_PORT]   # foreground; data under DIR
# The harness starts it in the background and stops it with SIGTERM.
# KAFKA_SASL_USERS="name=password ..." makes the client listener SASL_PLAINTEXT
# with mechanism PLAIN for those users (and the broker's own "admin").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?data directory}; port=${2:?port}; ctl=${3:-$((port + 1))}
lib="$here/target/lib"
if [ ! -d "$lib" ]; then
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies >&2
fi
mkdir -p "$dir"
proto=PLAINTEXT
[ -n "${KAFKA_SASL_USERS:-}" ] && proto=SASL_PLAINTEXT
cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl
listeners=$proto://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl
advertised.listeners=$proto://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=$proto:$proto,CONTROLLER:PLAINTEXT
inter.broker.listener.name=$proto
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
if [ -n "${KAFKA_SASL_USERS:-}" ]; then
  users=""
  for u in $KAFKA_SASL_USERS; do users="$users user_${u%%=*}=\"${u#*=}\""; done
  cat >> "$dir/server.properties" <<PROPS
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="admin-secret" user_admin="admin-secret"$users;
PROPS
fi
cat > "$dir/log4j.properties" <<PROPS
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
PROPS
java_opts=(-Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
           "-Dlog4j.configuration=file:$dir/log4j.properties" -cp "$lib/*")
if [ ! -f "$dir/data/meta.properties" ]; then
  java "${java_opts[@]}" kafka.tools.StorageTool format -t "$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid)" \
       -c "$dir/server.properties" >&2
fi
exec java "${java_opts[@]}" kafka.Kafka "$dir/server.properties"
