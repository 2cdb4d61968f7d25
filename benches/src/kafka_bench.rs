//! `amx-kafka-bench`: a Kafka source into a view, in process (the controller API; no HTTP),
//! against librdkafka's mock cluster (the Kafka protocol over loopback, brokers in this
//! process), or with `--brokers HOST:PORT` a real broker (`../shared/services/kafka-broker.sh
//! start PORT DIR`), on which it creates topics of its own (`amx-bench-…-events`, `…-out`).
//!
//! ```text
//! cargo run --release -p amx-benches --bin amx-kafka-bench -- [--messages N] [--partitions P]
//!     [--workers W] [--probes K] [--fetch-wait-ms MS] [--brokers HOST:PORT]
//! ```
//! 1. Produces N knowledge events (JSON, distinct documents) to a topic of P partitions
//!    before the job starts, then installs a job reading the topic into `knowledge_events`
//!    with a view `by_id`, and times until the view holds all N: the backlog's events/s (and
//!    per worker).
//! 2. The job's Kafka sink writes `by_id` to a topic `out` in upsert form (key: the document
//!    id): the time until the topic's offsets reach N (the sink's messages/s, counted from the
//!    job's start, and how long after the view it finished; the sink writes in transactions,
//!    whose commit markers take an offset each per partition: a fraction of a percent here).
//! 3. Then K events one at a time, each produced once the last is visible: the time from its
//!    produce call to a query seeing it, polled every 1 ms, and to its message in `out`
//!    (end-to-end latency through the view, and through the sink; p50/p99).
//!
//! `--fetch-wait-ms` sets the consumer's `fetch.wait.max.ms` (librdkafka's default: 500 ms;
//! the mock broker answers a fetch only then when no data is waiting, where a real broker
//! answers as soon as data arrives).

use std::time::{Duration, Instant};

use amx_benches::{arg, count, peak_rss_mib, percentile};
use amx_cluster::job::Job;
use amx_cluster::{ClusterConfig, Controller};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event `i` as the job maps it: document `doc-i` in one of 16 collections.
fn event(i: usize) -> String {
    format!(r#"{{"c":"c{}","id":"doc-{i}","v":1,"size":{},"t":1700000000}}"#, i % 16, i % 1000)
}

fn main() -> anyhow::Result<()> {
    // As the engine's binary does (README, "Transparent huge pages").
    let _ = aimatrix::memory::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let messages = arg(&args, "--messages", 500_000)?;
    let partitions = arg(&args, "--partitions", 4)?.max(1) as i32;
    let workers = arg(&args, "--workers", 2)?.max(1);
    let probes = arg(&args, "--probes", 50)?;
    let fetch_wait = arg(&args, "--fetch-wait-ms", 0)?;
    let real = args.iter().position(|a| a == "--brokers").and_then(|i| args.get(i + 1)).cloned();
    // The mock cluster lives as long as `_cluster`.
    let (_cluster, brokers, events, out_topic) = match real {
        None => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            let brokers = cluster.bootstrap_servers();
            cluster.create_topic("events", partitions, 1)?;
            cluster.create_topic("out", partitions, 1)?;
            (Some(cluster), brokers, "events".to_owned(), "out".to_owned())
        }
        Some(brokers) => {
            // Topics of this run's own: a real broker keeps the last run's.
            let run = std::process::id();
            let (events, out) = (format!("amx-bench-{run}-events"), format!("amx-bench-{run}-out"));
            create_topics(&brokers, &[&events, &out], partitions)?;
            (None, brokers, events, out)
        }
    };
    let (events, out_topic) = (events.as_str(), out_topic.as_str());
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        // A probe goes out at once (a backlog's messages still batch while the queue is full).
        .set("linger.ms", "0")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let produce = |i: usize| -> anyhow::Result<()> {
        let value = event(i);
        let partition = (i % partitions as usize) as i32;
        loop {
            match producer.send(BaseRecord::<(), str>::to(events).payload(&value).partition(partition)) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    };
    let started = Instant::now();
    for i in 0..messages {
        produce(i)?;
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    // What the broker holds (a failed delivery is not reported to a BaseProducer's sender).
    let consumer: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "bench").create()?;
    let mut held = 0;
    for partition in 0..partitions {
        use rdkafka::consumer::Consumer;
        let (low, high) = consumer.fetch_watermarks(events, partition, Duration::from_secs(10))?;
        held += high - low;
    }
    anyhow::ensure!(held == messages as i64, "the broker holds {held} of the {messages} events produced");
    println!("produced {messages} events to {partitions} partitions in {:.1} s", started.elapsed().as_secs_f64());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build()?;
    let controller = Controller::start(ClusterConfig { workers, ..Default::default() })?;
    let job = amx_benches::KNOWLEDGE_JOB.replace(
        "kind = \"push\"\nformat = \"json\"",
        &format!("kind = \"kafka\"\nformat = \"json\"\n[sources.kafka]\nbrokers = \"{brokers}\"\ntopic = \"{events}\""),
    );
    let job = format!(
        "{job}\n[[sinks]]\nname = \"out\"\nview = \"by_id\"\nkey = [\"document_id\"]\n[sinks.kafka]\nbrokers = \
         \"{brokers}\"\ntopic = \"{out_topic}\"\n"
    );
    let job = if fetch_wait > 0 {
        job.replace(
            &format!("topic = \"{events}\""),
            &format!("topic = \"{events}\"\n[sources.kafka.properties]\n\"fetch.wait.max.ms\" = \"{fetch_wait}\""),
        )
    } else {
        job
    };
    let started = Instant::now();
    // The source's thread hands its batches to the controller, which answers in tasks of
    // this runtime (as the server's).
    let entered = runtime.enter();
    controller.install_job(&Job::parse(&job, std::path::Path::new("."))?)?;
    drop(entered);
    runtime.block_on(async {
        let (mut last, mut moved) = (0, Instant::now());
        loop {
            let n = count(&controller, "by_id").await?;
            if n >= messages as i64 {
                return anyhow::Ok(());
            }
            if n != last {
                (last, moved) = (n, Instant::now());
            } else if moved.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("the view stopped at {n} of {messages} events for 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let rate = messages as f64 / seconds;
    println!(
        "backlog: {messages} events in {seconds:.1} s ({rate:.0} events/s, {:.0} per worker, {workers} workers); peak RSS {:.0} MiB",
        rate / workers as f64,
        peak_rss_mib().unwrap_or(0.0)
    );
    // The sink: one message per row of the view (the keys are distinct).
    let written = || -> anyhow::Result<i64> {
        use rdkafka::consumer::Consumer;
        let mut n = 0;
        for partition in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(out_topic, partition, Duration::from_secs(10))?;
            n += high - low;
        }
        Ok(n)
    };
    let (mut last, mut moved) = (0, Instant::now());
    loop {
        let n = written()?;
        if n >= messages as i64 {
            break;
        }
        if n != last {
            (last, moved) = (n, Instant::now());
        } else if moved.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the sink stopped at {n} of {messages} messages for 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sink_seconds = started.elapsed().as_secs_f64();
    println!(
        "sink: {messages} messages in topic out {sink_seconds:.1} s after the start ({:.0} messages/s), {:.1} s after the view",
        messages as f64 / sink_seconds,
        sink_seconds - seconds
    );
    // Reads `out` from its end: each probe's message.
    let out: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "bench-out")
        .set("fetch.wait.max.ms", "1")
        .create()?;
    {
        use rdkafka::consumer::Consumer;
        let mut list = rdkafka::TopicPartitionList::new();
        for partition in 0..partitions {
            // The end now, resolved here (`Offset::End` is resolved at the first poll, after
            // the first probe's message may already be there).
            let (_, high) = consumer.fetch_watermarks(out_topic, partition, Duration::from_secs(10))?;
            list.add_partition_offset(out_topic, partition, rdkafka::Offset::Offset(high))?;
        }
        out.assign(&list)?;
    }

    let mut latencies = Vec::new();
    let mut sink_latencies = Vec::new();
    for k in 0..probes {
        let i = messages + k;
        let sent = Instant::now();
        produce(i)?;
        // Not `flush`: rdkafka's waits in polls of 100 ms for delivery reports this producer
        // does not ask for, which put a 100 ms floor under every probe (measured before
        // 2026-12-06). librdkafka's own thread sends the message.
        producer.poll(Duration::ZERO);
        runtime.block_on(async {
            let sql = format!("SELECT count(*) AS n FROM by_id WHERE document_id = 'doc-{i}'");
            loop {
                if let amx_cluster::SqlAnswer::Rows { batches, .. } = controller.execute_sql(&sql).await? {
                    let n = batches[0]
                        .column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .map_or(0, |c| c.value(0));
                    if n == 1 {
                        return anyhow::Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })?;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        let key = format!(r#"{{"document_id":"doc-{i}"}}"#);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            use rdkafka::message::Message;
            anyhow::ensure!(Instant::now() < deadline, "probe {i} did not reach the sink in 30 s");
            if let Some(message) = out.poll(Duration::from_millis(1))
                && message?.key() == Some(key.as_bytes())
            {
                break;
            }
        }
        sink_latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    sink_latencies.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        println!(
            "end to end (produce to visible in a query), {probes} events one at a time: p50 {:.1} ms, p99 {:.1} ms",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
        println!(
            "end to end (produce to its message in the sink topic): p50 {:.1} ms, p99 {:.1} ms",
            percentile(&sink_latencies, 0.5),
            percentile(&sink_latencies, 0.99)
        );
    }
    controller.shutdown();
    controller.join()
}

/// Creates `topics` with `partitions` partitions each on a real broker.
fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for result in runtime.block_on(admin.create_topics(&new, &options))? {
        result.map_err(|(topic, e)| anyhow::anyhow!("creating topic {topic}: {e}"))?;
    }
    Ok(())
}
