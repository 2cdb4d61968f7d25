"""Clients for examples/pipeline.toml (run by scripts/pipeline.sh): topics and bucket, a
producer of a file's lines, and readers of the two sinks' output folded into the view."""

import json
import os
import sys

BROKERS = os.environ.get("BROKERS", "127.0.0.1:19092")
S3 = os.environ.get("S3", "http://127.0.0.1:19000")


def s3():
    import boto3

    return boto3.client(
        "s3", endpoint_url=S3, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )


def setup():
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BROKERS})
    wanted = [NewTopic("wikipedia-changes", 3, 1), NewTopic("page-sizes", 2, 1)]
    existing = admin.list_topics(timeout=30).topics
    for topic, future in admin.create_topics([t for t in wanted if t.topic not in existing]).items():
        future.result()
        print(f"created topic {topic}")
    client = s3()
    if "lake" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="lake")
        print("created bucket lake")


def produce(path):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": BROKERS, "enable.idempotence": True})
    n = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                producer.produce("wikipedia-changes", line.rstrip("\n").encode())
                producer.poll(0)
                n += 1
    producer.flush(30)
    print(f"produced {n} messages to wikipedia-changes")


def topic():
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": "pipeline-reader", "enable.auto.commit": False})
    partitions = consumer.list_topics("page-sizes", timeout=30).topics["page-sizes"].partitions
    ends, assign = {}, []
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition("page-sizes", p), timeout=30)
        if high > low:
            ends[p] = high
            assign.append(TopicPartition("page-sizes", p, low))
    consumer.assign(assign)
    state, messages = {}, 0
    while ends:
        message = consumer.poll(10)
        if message is None:
            break
        if message.error():
            continue
        messages += 1
        key = json.loads(message.key())["document_id"]
        if message.value() is None:
            state.pop(key, None)
        else:
            state[key] = json.loads(message.value())
        if message.offset() + 1 >= ends.get(message.partition(), 0):
            ends.pop(message.partition(), None)
    for key in sorted(state):
        print(json.dumps(state[key], sort_keys=True))
    print(f"{len(state)} rows from {messages} messages", file=sys.stderr)


def lake():
    import io

    import pyarrow.parquet as pq

    client = s3()
    manifest = json.loads(client.get_object(Bucket="lake", Key="page_sizes/manifest.json")["Body"].read())
    counts = {}
    for file in manifest["files"]:
        body = client.get_object(Bucket="lake", Key="page_sizes/" + file["key"])["Body"].read()
        for row in pq.read_table(io.BytesIO(body)).to_pylist():
            diff = row.pop("aimatrix_diff")
            row.pop("aimatrix_timestamp")
            key = json.dumps(row, sort_keys=True)
            counts[key] = counts.get(key, 0) + diff
    rows = sorted(k for k, n in counts.items() for _ in range(max(n, 0)))
    for row in rows:
        print(row)
    print(f"{len(rows)} rows from {len(manifest['files'])} sets, complete up to {manifest['upper']}", file=sys.stderr)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "setup":
        setup()
    elif command == "produce":
        produce(sys.argv[2])
    elif command == "topic":
        topic()
    elif command == "lake":
        lake()
    else:
        sys.exit(f"unknown command {command!r}")
