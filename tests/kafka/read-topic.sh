#!/usr/bin/env bash
# Prints every message of a topic with Kafka's own console consumer (not our
# client, so tests check what really reached the broker), one per line:
#   partition<TAB>offset<TAB>key<TAB>headers<TAB>value
#   tests/kafka/read-topic.sh BROKERS TOPIC [IDLE_MS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
brokers=${1:?brokers}; topic=${2:?topic}; idle=${3:-4000}
exec java -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
  -Dlog4j.configuration=file:/dev/null -cp "$here/target/lib/*" \
  org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$brokers" --topic "$topic" \
  --from-beginning --timeout-ms "$idle" \
  --property print.partition=true --property print.offset=true --property print.key=true \
  --property print.headers=true --property key.separator=$'\t' --property headers.separator=, \
  2>/dev/null || true
